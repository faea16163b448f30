"""How a worker forms its batches: messages already waiting join the batch in hand even
when its wait to fill is over, so a wait of 0 is natural batching, never a batch a message;
and the wait counts from the broker's receipt of the batch's first message."""

from __future__ import annotations

import time
import uuid

from ingest_fixtures import RunningWorker, pilot, publish_all, stream
from test_ingest_partitions import end_sessions

from ehealthlab.ingest.worker_config import IngestConfig

__all__ = ["pilot"]


def test_with_no_wait_a_backlog_is_still_stored_in_batches_of_many(pilot):
    config = IngestConfig(
        subscription="partitioned", partition=0, partitions=1, batch_max_wait_s=0.0
    )
    name = f"ingest-{uuid.uuid4().hex[:6]}"
    device_id, password = pilot.register("multiparameter_monitor")
    RunningWorker(pilot.settings, name, config).close()  # stopped: its session stays
    publish_all(pilot, device_id, password, stream(device_id, 300, per_message=1))
    worker = RunningWorker(pilot.settings, name, config)  # 300 messages wait for it
    try:
        got = pilot.wait_for("SELECT count(*) FROM readings", [(300,)])
        assert got == [(300,)]
        stats = worker.worker.stats
        deadline = time.monotonic() + 30  # its counters follow the commit
        while stats.messages < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        with stats.lock:
            messages, batches = stats.messages, stats.batches
    finally:
        worker.close()
        end_sessions(pilot, [config.client_id(name)])
    assert messages == 300
    assert batches <= messages / 5, (batches, messages)


#: a long wait to fill a batch, so that a wait counted from the wrong moment shows
LONG_WAIT_S = 5.0


def test_a_message_that_waited_in_the_broker_is_not_held_a_whole_wait_more(pilot):
    """The wait to fill a batch counts from the broker's receipt of its first message: one
    held by the broker longer than the wait (its worker away) is stored at once, not after
    another wait. Counted from when the worker got to it, this took LONG_WAIT_S more."""
    config = IngestConfig(
        subscription="partitioned", partition=0, partitions=1, batch_max_wait_s=LONG_WAIT_S
    )
    name = f"ingest-{uuid.uuid4().hex[:6]}"
    device_id, password = pilot.register("multiparameter_monitor")
    RunningWorker(pilot.settings, name, config).close()  # stopped: its session stays
    publish_all(pilot, device_id, password, stream(device_id, 1, per_message=1))
    time.sleep(LONG_WAIT_S + 0.2)  # the broker has held it longer than the wait
    worker = RunningWorker(pilot.settings, name, config)
    subscribed = time.monotonic()
    try:
        got = pilot.wait_for("SELECT count(*) FROM readings", [(1,)], timeout=30)
        stored_after_s = time.monotonic() - subscribed
    finally:
        worker.close()
        end_sessions(pilot, [config.client_id(name)])
    assert got == [(1,)]
    # at once: the worker's first poll and one transaction (well under a second here, and
    # bounded for a loaded machine), not LONG_WAIT_S more
    assert stored_after_s < LONG_WAIT_S / 2, stored_after_s
