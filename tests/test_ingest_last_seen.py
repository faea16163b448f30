"""Devices' last-seen times, which ingest sets after each batch in a transaction of its own,
committed without waiting for the disk (the readings were committed durably before)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from conftest import create_database, drop_database, with_database
from ingest_fixtures import T0, message

from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
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
