"""What a batch costs the server, where it once cost more: the message claims' lookup
(`ehl_claim_messages`) stays a probe of the message log's index per message, whatever the
log's statistics were when its plan was cached (a plan made while the log was small must not
read all of it once it has grown: migration 0039); and a worker's batch waits for the server
seven times, nine before (BEGIN and the claims; the staging COPY, twice; the readings'
INSERT; the message log's COPY, twice; the rest and COMMIT), read from libpq's trace."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import psycopg
import pytest
from ingest_fixtures import T0, bp, message
from store_fixtures import register_device, traced, waits

from ehealthlab.contract.topics import readings_topic
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import LastSeenWrites, store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.readings import ReadingWriter

DEVICE = "cuff-0001"
LOCK_CLASS = 0x45484C4D  # ingest's (store_batch._MESSAGE_LOCK_CLASS); any value would do


def digest(msg_id: str) -> bytes:
    return hashlib.sha256(msg_id.encode()).digest()[:16]


def log_messages(conn: psycopg.Connection, first: int, count: int) -> None:
    """Message-log rows for msg_ids m-<first> ... as ingest writes them (content digests)."""
    conn.execute(
        "INSERT INTO device_messages (device_id, received_at, msg_id, qos, payload_bytes,"
        " readings, accepted, duplicates, rejected, content_digest)"
        " SELECT %s, now(), 'm-' || i, 1, 120, 1, 1, 0, 0,"
        " substr(sha256(convert_to('m-' || i, 'UTF8')), 1, 16)"
        " FROM generate_series(%s::int, %s::int) AS i",
        (DEVICE, first, first + count - 1),
    )


def claim(conn: psycopg.Connection, msg_ids: list[str]) -> set[str]:
    """The msg_ids among `msg_ids` that the log holds already, as ingest asks for them."""
    rows = conn.execute(
        "SELECT claimed_msg_id FROM ehl_claim_messages(%s::text[], %s, %s::text[], %s::text[],"
        " %s::bytea[], %s::bytea[])",
        ([DEVICE], LOCK_CLASS, [DEVICE] * len(msg_ids), msg_ids,
         [digest(m) for m in msg_ids], [b"\0" * 16] * len(msg_ids)),
    ).fetchall()  # fmt: skip
    return {msg_id for (msg_id,) in rows}


@pytest.mark.parametrize(
    "rows_when_planned", [0, 1_000], ids=["never analyzed", "analyzed at 1,000 rows"]
)
def test_the_claim_lookup_probes_the_index_however_much_the_log_grew(store_url, rows_when_planned):
    with psycopg.connect(store_url, autocommit=True) as conn:
        register_device(conn, DEVICE)
        if rows_when_planned:
            log_messages(conn, 1, rows_when_planned)
            conn.execute("ANALYZE device_messages")
        batch = [f"m-{i}" for i in range(1, 61)]
        for _ in range(10):  # PL/pgSQL settles on its cached plan after five calls
            assert claim(conn, batch) == set(batch[:rows_when_planned])
        log_messages(conn, rows_when_planned + 1, 20_000)  # grown, not analyzed again
        newest = [f"m-{rows_when_planned + 20_000 - i}" for i in range(30)]
        unknown = [f"not-logged-{i}" for i in range(30)]
        with conn.transaction():
            found = claim(conn, newest + unknown)
            scans = conn.execute(
                "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables"
                " WHERE relname = 'device_messages'"
            ).fetchone()
    assert found == set(newest)
    assert scans is not None
    seq_scans, index_scans = scans
    assert seq_scans == 0
    assert index_scans >= len(newest) + len(unknown)


def test_a_workers_batch_waits_for_the_server_seven_times(store_url):
    def judged(i: int):
        at = T0 + timedelta(minutes=i)
        payload = message(bp(2 * i + 1, at), msg_id=f"m-{i}", sent_at=at)
        received = ReceivedMessage(readings_topic(DEVICE), payload, 1, False, 0, at, True)
        return judge(received, lambda device: KnownDevice("blood_pressure_monitor"))

    with psycopg.connect(store_url, autocommit=True) as conn:  # as a worker's connection is
        register_device(conn, DEVICE)
        writer, last_seen = ReadingWriter(conn), LastSeenWrites(every_s=3600)
        # the session's staging table, the month's partition, the device's last-seen time
        store_judged(conn, writer, [judged(i) for i in range(10)], DEFAULT_RULES, last_seen)
        with traced(conn) as lines:
            batch = store_judged(
                conn, writer, [judged(i) for i in range(10, 30)], DEFAULT_RULES, last_seen
            )
        logged = conn.execute("SELECT count(*), sum(accepted) FROM device_messages").fetchone()
    assert (batch.result.inserted, batch.redeliveries) == (40, 0)
    assert logged == (30, 60)
    assert waits(lines) == 7
