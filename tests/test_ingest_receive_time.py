"""The receive time ingest stores is the broker's, against a real broker and store: a message
that waited in the broker while ingest was away keeps it, a publisher cannot forge it, and
only a simulated device may state a (simulated) one."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from ingest_fixtures import T0, bp, message, pilot, workers

from ehealthlab.contract.topics import INGEST_SHARED_SUBSCRIPTION, readings_topic
from ehealthlab.mqtt import MqttConnection

__all__ = ["pilot", "workers"]


def test_receive_time_is_the_brokers_even_when_the_message_waited_there(pilot, workers):
    """A message that waits in the broker while ingest is away keeps the time the platform
    received it: its clock offset is not inflated by the wait, and a publisher cannot forge
    the broker's stamp."""
    name = f"ingest-{uuid.uuid4().hex[:6]}"
    # an ingest session that went away without a word (a crash): the broker keeps its messages
    crashed = MqttConnection(pilot.admin, name, clean_start=False, session_expiry_s=600)
    crashed.connect()
    crashed.subscribe(INGEST_SHARED_SUBSCRIPTION)
    crashed.drop()
    device_id, password = pilot.register()
    device = pilot.device(device_id, password)
    try:
        sent = datetime.now(UTC)
        device.publish(readings_topic(device_id), message(bp(1, T0), sent_at=sent))
        forged = [("ehl-received-at", "0")]
        device.publish(
            readings_topic(device_id), message(bp(3, T0 + timedelta(hours=1))),
            user_properties=forged,
        )  # fmt: skip
        published = datetime.now(UTC)
        time.sleep(3)
        restarted = datetime.now(UTC)
        workers(name)
        rows = pilot.wait_for(
            "SELECT count(*) FROM readings WHERE device_id = %s", [(4,)], device_id
        )
        assert rows == [(4,)]
        stored = pilot.query(
            "SELECT seq, received_at, clock_offset_s FROM readings WHERE device_id = %s"
            " ORDER BY seq",
            device_id,
        )
    finally:
        device.close()
    for seq, received_at, offset in stored:
        # the broker's time of receipt, not the worker's (3 s later) nor the forged epoch
        assert sent - timedelta(seconds=1) <= received_at <= published + timedelta(seconds=1), seq
        assert received_at < restarted - timedelta(seconds=2)
        if seq == 1:
            # the device's clock is the machine's: its offset is at most the time the
            # publish took (measured, not assumed), never the 3 s the worker was away
            took = (published - sent).total_seconds()
            assert -took - 0.5 <= offset <= 0.5, (offset, took)


def test_only_a_simulated_device_may_state_its_receive_time(pilot, workers):
    """A simulator running on simulated time states the receive time in a user property;
    a real device saying the same is not believed (the broker's stamp counts)."""
    workers()
    real_id, real_password = pilot.register()
    simulated_id, simulated_password = pilot.register()
    with psycopg.connect(pilot.database_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET simulated = true WHERE device_id = %s", (simulated_id,))
    claimed = T0 + timedelta(seconds=30)
    claim = [("ehl-simulated-received-at", str(int(claimed.timestamp() * 1000)))]
    for device_id, password in ((real_id, real_password), (simulated_id, simulated_password)):
        with pilot.device(device_id, password) as device:
            device.publish(
                readings_topic(device_id), message(bp(1, T0), sent_at=T0 + timedelta(seconds=29)),
                user_properties=claim,
            )  # fmt: skip
    stored = "SELECT device_id, received_at, clock_corrected FROM readings WHERE seq = 1"
    assert pilot.wait_for("SELECT count(*) FROM readings WHERE seq = 1", [(2,)]) == [(2,)]
    got = {d: (r, c) for d, r, c in pilot.query(stored)}
    assert got[simulated_id] == (claimed, False)  # simulated time, clock judged right
    real_received, real_corrected = got[real_id]
    assert real_received > datetime.now(UTC) - timedelta(minutes=1)  # the broker's time
    assert real_corrected  # sent_at in March, received now: its clock is wrong
