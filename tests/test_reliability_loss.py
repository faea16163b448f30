"""Promise 1 of issue 13, no loss and no duplicates: 50 simulated devices send 10,000 QoS 1
readings while ingest workers are SIGKILLed, PostgreSQL is stopped for 60 s and the broker
is SIGKILLed and restarted; exactly the 10,000 readings are stored, each once.

Everything is real: the devices are the simulators (persistent sessions, disk buffers),
ingest is `ehealthlab ingest --workers 2` in its default mode, and the broker and database
are this module's own servers. Figures are printed (`-s`) for docs/reliability-faults.md.
"""

from __future__ import annotations

import json
import time

import pytest
from reliability_fixtures import (
    Fleet,
    IngestCommand,
    blast,
    broker_of_its_own,
    eventually,
    fresh_pilot,
    journal_replay,
    own_broker,
    own_postgres,
    sigkill_broker,
    stored_readings,
    tally,
    wait_until_subscribed,
)

from ehealthlab.stack.programs import log_size

pytestmark = pytest.mark.long  # started first when the suite runs in parallel

__all__ = ["own_broker", "own_postgres"]

DEVICES = 50
PER_DEVICE = 200
OUTAGE_S = 60.0


def test_ten_thousand_readings_survive_worker_kills_a_database_stop_and_a_broker_crash(
    own_postgres, own_broker, tmp_path
):
    started = time.monotonic()
    figures: dict[str, object] = {}
    with fresh_pilot(own_postgres, own_broker) as pilot:
        ingest = IngestCommand(pilot, workers=2)
        fleet: Fleet | None = None
        try:
            ingest.start()
            wait_until_subscribed(pilot, ingest)
            fleet = Fleet(pilot, tmp_path, DEVICES, PER_DEVICE, port=own_broker.port, rate=1.5)
            devices = fleet.device_ids
            fleet.start()

            # 1. a worker SIGKILLed, three times; its command does not replace it, so the
            # group is killed and the command started again, as a supervisor would
            survivors = []
            for kill in range(3):
                mark = fleet.acknowledged()
                assert eventually(lambda m=mark: fleet.acknowledged() >= m + 300, 120)
                ingest.kill_one_worker(kill % 2)
                time.sleep(1.0)
                survivors.append(len(ingest.worker_pids()))
                if kill == 2:
                    break  # the third restart happens during the database outage
                ingest.kill()
                ingest.start()
            figures["workers_left_after_one_was_killed"] = survivors

            # 2. PostgreSQL stopped for 60 s; ingest restarted meanwhile (killed above);
            # 3. halfway through, while the broker holds the outage's backlog and the devices
            # keep sending, the broker SIGKILLed and restarted: what it acknowledged since its
            # last save comes back from its journal (ehl_journal)
            figures["stored_when_outage_began"] = stored_readings(pilot, devices)
            own_postgres.stop()
            outage_started = time.monotonic()
            ingest.kill()
            ingest.start()
            during = fleet.acknowledged()
            log_offset = log_size(own_broker.log_file)
            while time.monotonic() - outage_started < OUTAGE_S:
                fleet.check()
                if "acknowledged_when_broker_killed" not in figures and (
                    time.monotonic() - outage_started >= OUTAGE_S / 2
                ):
                    figures["acknowledged_when_broker_killed"] = fleet.acknowledged()
                    sigkill_broker(own_broker)
                time.sleep(1.0)
            figures["published_during_outage"] = fleet.acknowledged() - during
            figures["journal_replay"] = journal_replay(own_broker, log_offset)
            assert figures["journal_replay"] is not None, "the broker published nothing again"
            own_postgres.start()
            back = time.monotonic()
            # ingest catches up with what the broker had acknowledged to the devices
            mark = fleet.acknowledged()
            assert eventually(lambda: stored_readings(pilot, devices) >= mark, 180), (
                stored_readings(pilot, devices),
                mark,
                ingest.tail(),
            )
            figures["catch_up_after_outage_s"] = round(time.monotonic() - back, 1)

            # 4. the devices send the rest as fast as they like
            fleet.rate = 100.0
            assert eventually(fleet.all_delivered, 300), (fleet.taken(), fleet.acknowledged())
            assert eventually(
                lambda: stored_readings(pilot, devices) >= DEVICES * PER_DEVICE, 180
            ), (stored_readings(pilot, devices), ingest.tail())
            fleet.stop()
            figures["longest_device_buffering_s"] = round(fleet.longest_buffered_s(), 1)
            figures["most_readings_buffered_by_a_device"] = fleet.most_buffered()
            figures["device_reconnections"] = fleet.reconnections()
            assert ingest.stop() == 0, ingest.tail()
        finally:
            if fleet is not None:
                fleet.stopping.set()
            ingest.close()
            if not own_postgres.is_running():
                own_postgres.start()
            if not own_broker.is_running():
                own_broker.start()
        counts = tally(pilot, devices)
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures.update(vars(counts))
    print("FIGURES promise-1", json.dumps(figures))
    total = DEVICES * PER_DEVICE
    assert counts.rows == total
    assert counts.distinct_keys == total  # by the idempotency key (device, metric, at)
    assert counts.distinct_seqs == total
    assert counts.duplicates == 0  # a message sent again is a redelivery, not a duplicate
    assert counts.rejected == 0


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "mosquitto-alone"])
def test_a_broker_crash_while_it_holds_a_backlog_loses_nothing(
    own_postgres, journal, tmp_path_factory
):
    """The worker is away (killed) while a device sends 500 messages, every one PUBACKed;
    then the broker is SIGKILLed before its next autosave and restarted. With its journal
    (the stack's and deploy's broker) all 500 are stored; Mosquitto alone, which saves only
    every autosave_interval, shows the window the journal closes: it loses them."""
    broker = broker_of_its_own(tmp_path_factory, journal=journal)
    try:
        with fresh_pilot(own_postgres, broker) as pilot:
            device_id, password = pilot.register("multiparameter_monitor")
            ingest = IngestCommand(pilot, workers=1)
            try:
                ingest.start()
                wait_until_subscribed(pilot, ingest, partitions=1)
                blast(pilot, device_id, password, range(1, 11))
                assert eventually(lambda: stored_readings(pilot, [device_id]) == 10, 180)
                ingest.kill()
                blast(pilot, device_id, password, range(11, 511))  # queued for the worker
                log_offset = log_size(broker.log_file)
                sigkill_broker(broker)
                replayed = journal_replay(broker, log_offset)
                ingest.start()
                wait_until_subscribed(pilot, ingest, partitions=1)
                blast(pilot, device_id, password, range(1000, 1001))  # after the backlog
                assert eventually(lambda: stored_readings(pilot, [device_id]) >= 11, 120)
                if journal:  # the backlog arrives before the message sent after it
                    assert eventually(lambda: stored_readings(pilot, [device_id]) >= 511, 120)
            finally:
                ingest.close()
            (backlog,) = pilot.query(
                "SELECT count(*) FROM readings WHERE device_id = %s AND seq BETWEEN 11 AND 510",
                device_id,
            )[0]
    finally:
        broker.remove()
    print(
        "FIGURES broker-crash",
        json.dumps(
            {
                "journal": journal,
                "acknowledged_backlog": 500,
                "stored": backlog,
                "journal_replay": replayed,
            }
        ),
    )
    if journal:
        assert backlog == 500
        assert replayed is not None and replayed["messages"] >= 500
    else:
        assert backlog == 0, "Mosquitto alone kept the backlog: this test no longer shows a crash"
        assert replayed is None
