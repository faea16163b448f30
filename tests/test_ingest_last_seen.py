"""Devices' last-seen times, which ingest sets after each batch in a transaction of its own,
committed without waiting for the disk (the readings were committed durably before); a
worker writes a device's time at most once a second."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest
from conftest import create_database, drop_database, with_database
from ingest_fixtures import T0, message

from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import LastSeenWrites, store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.readings import ReadingWriter


def test_last_seen_moves_forward_only_and_its_transaction_commits_asynchronously(
    plain_admin_url, migrated_template
):
    name = create_database(plain_admin_url, template=migrated_template)
    url = with_database(plain_admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            startup = conn.execute(
                "INSERT INTO organisations (kind, name) VALUES ('startup', 'S') RETURNING id"
            ).fetchone()[0]
            for device in ("scale-1", "scale-2"):
                conn.execute(
                    "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                    " VALUES (%s, %s, 'weighing_scale', 'M', %s)",
                    (device, startup, device),
                )

        def weighed(device: str, seq: int, received_after_s: int):
            at = T0 + timedelta(seconds=received_after_s)
            item = {"seq": seq, "metric": "body_weight", "value": 70.0, "unit": "kg",
                    "at": (T0 + timedelta(minutes=seq)).isoformat()}  # fmt: skip
            topic = f"ehl/v1/devices/{device}/readings"
            payload = message([item], sent_at=at)
            received = ReceivedMessage(topic, payload, 1, False, 0, at, True)
            return judge(received, lambda _: KnownDevice("weighing_scale"))

        with psycopg.connect(url) as conn:
            writer = ReadingWriter(conn)
            # the test server runs without durability: this session asks for it, as production
            conn.execute("SET synchronous_commit = on")
            conn.commit()
            # the later message of scale-1 first: a batch never moves last-seen back
            batch = [weighed("scale-1", 2, 60), weighed("scale-1", 1, 30), weighed("scale-2", 1, 5)]
            with conn.transaction():
                # inside an outer transaction the last-seen update is a savepoint, so its
                # transaction-local setting is still visible here
                store_judged(conn, writer, batch, DEFAULT_RULES)
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
            store_judged(conn, writer, [weighed("scale-2", 2, 1)], DEFAULT_RULES)
            seen = dict(conn.execute("SELECT device_id, last_seen_at FROM devices").fetchall())
            readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        assert seen == {"scale-1": T0 + timedelta(seconds=60), "scale-2": T0 + timedelta(seconds=5)}
        assert readings == 4
    finally:
        drop_database(plain_admin_url, name)


# a worker writes a device's last-seen time at most once a second (LastSeenWrites)
DUE_CASES = [
    # (written before, seen in this batch, due now)
    ({}, {"a": 0.0}, {"a": 0.0}),
    ({"a": 0.0}, {"a": 0.5}, {}),
    ({"a": 0.0}, {"a": 1.0}, {"a": 1.0}),
    ({"a": 0.0}, {"a": 3.0, "b": 0.2}, {"a": 3.0, "b": 0.2}),
    ({"a": 5.0}, {"a": 2.0}, {}),  # older than what was written: GREATEST keeps it anyway
]


@pytest.mark.parametrize(("before", "seen", "due"), DUE_CASES)
def test_a_devices_time_is_due_once_it_moved_on_a_second(before, seen, due):
    def at(values: dict[str, float]) -> dict[str, datetime]:
        return {device: T0 + timedelta(seconds=s) for device, s in values.items()}

    writes = LastSeenWrites(every_s=1.0)
    writes.written(at(before))
    assert writes.due(at(seen)) == at(due)


def test_a_worker_writes_a_busy_devices_last_seen_once_a_second(plain_admin_url, migrated_template):
    name = create_database(plain_admin_url, template=migrated_template)
    url = with_database(plain_admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # as a worker's connection
            startup = conn.execute(
                "INSERT INTO organisations (kind, name) VALUES ('startup', 'S') RETURNING id"
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                " VALUES ('scale-1', %s, 'weighing_scale', 'M', 'scale-1')",
                (startup,),
            )
            writer, writes = ReadingWriter(conn), LastSeenWrites(every_s=1.0)
            stored_times = []
            for seq, after_ms in enumerate((0, 400, 900, 1_000, 1_700), start=1):
                at = T0 + timedelta(milliseconds=after_ms)
                item = {"seq": seq, "metric": "body_weight", "value": 70.0, "unit": "kg",
                        "at": (T0 + timedelta(minutes=seq)).isoformat()}  # fmt: skip
                received = ReceivedMessage(
                    "ehl/v1/devices/scale-1/readings", message([item], sent_at=at), 1, False, 0,
                    at, True,
                )  # fmt: skip
                judged = judge(received, lambda _: KnownDevice("weighing_scale"))
                store_judged(conn, writer, [judged], DEFAULT_RULES, writes)
                stored_times.append(
                    conn.execute("SELECT last_seen_at FROM devices").fetchone()[0] - T0
                )
            readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        ms = [int(t / timedelta(milliseconds=1)) for t in stored_times]
        assert ms == [0, 0, 0, 1_000, 1_000]  # within a second of the newest, never ahead
        assert readings == 5
    finally:
        drop_database(plain_admin_url, name)
