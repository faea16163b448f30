"""Bytes stored per reading, table and indexes, on each physical form of the store.

Usage:
    .venv/bin/python bench/store_size.py --url postgresql://...  [--url ...] [--readings N]

Each --url names a server where a scratch database may be created (a superuser URL); the
form (plain or TimescaleDB) is whatever that server supports. Without --url the local
stack's server is used (`ehealthlab stack up` first). The baseline printed beside the
figures, measured in the same run, is what the same readings weigh as the contract's JSON
messages (500 readings per message), i.e. what a device sends.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg

from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.migrate import migrate
from ehealthlab.store.readings import ReadingRow, ReadingWriter

METRICS = ("bp_systolic", "bp_diastolic", "heart_rate", "spo2", "body_weight")


def synthetic_readings(count: int, devices: int = 200, days: int = 60) -> list[ReadingRow]:
    """A pilot-like mix: a few readings per device per day over two months."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    seqs = [0] * devices
    for i in range(count):
        device = i % devices
        seqs[device] += 1
        at = start + timedelta(seconds=(i // devices) * (days * 86400 * devices // count))
        at += timedelta(seconds=device * 7)
        received = at + timedelta(seconds=rng.uniform(0.5, 30))
        rows.append(
            ReadingRow(
                device_id=f"sim-{device:05d}-{'abcdef'[device % 6]}x", metric=METRICS[i % 5],
                at=at, value=round(rng.uniform(60, 160), 1), measured_at=at,
                received_at=received, seq=seqs[device], msg_id=str(uuid.uuid4()),
                clock_offset_s=round(rng.uniform(-2, 2), 3), clock_corrected=False,
            )
        )  # fmt: skip
    return rows


def json_bytes_per_reading(rows: list[ReadingRow]) -> float:
    total = 0
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        message = {
            "schema": "ehl.readings/1", "msg_id": chunk[0].msg_id,
            "sent_at": chunk[-1].received_at.isoformat(),
            "readings": [
                {"seq": r.seq, "metric": r.metric, "value": r.value, "unit": "mm[Hg]",
                 "at": r.at.isoformat()}
                for r in chunk
            ],
        }  # fmt: skip
        total += len(orjson.dumps(message))
    return total / len(rows)


def measure(admin_url: str, rows: list[ReadingRow]) -> list[tuple[str, float, float]]:
    name = "ehl_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    results = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            form = migrate(conn).form
            writer = ReadingWriter(conn)
            for start in range(0, len(rows), 5000):
                writer.write(rows[start : start + 5000])
            conn.execute("VACUUM ANALYZE readings")
            results.append((f"{form}", *sizes(conn, form, len(rows))))
            if form == "timescale":
                conn.execute("SELECT compress_chunk(c, if_not_compressed => true)"
                             " FROM show_chunks('readings') c")  # fmt: skip
                results.append((f"{form}, compressed", *sizes(conn, form, len(rows))))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def sizes(conn: psycopg.Connection, form: str, count: int) -> tuple[float, float]:
    if form == "timescale":
        # includes the compressed chunks' own tables and indexes once chunks are compressed
        table, index = conn.execute(
            "SELECT table_bytes + toast_bytes, index_bytes"
            " FROM hypertable_detailed_size('readings')"
        ).fetchone()
    else:
        table, index = conn.execute(
            "SELECT sum(pg_table_size(relid)), sum(pg_indexes_size(relid))"
            " FROM pg_partition_tree('readings') WHERE isleaf"
        ).fetchone()
    return table / count, index / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", help="superuser URL of a server to measure")
    parser.add_argument("--readings", type=int, default=200_000)
    args = parser.parse_args(argv)
    urls = args.url or [
        urlunsplit(
            urlsplit(settings_with_stack(Settings()).require_database_url())._replace(
                path="/postgres"
            )
        )
    ]
    rows = synthetic_readings(args.readings)
    baseline = json_bytes_per_reading(rows)
    print(f"{args.readings} readings, 200 devices, 60 days")
    print(f"{'form':<24}{'table B/reading':>18}{'indexes B/reading':>20}{'total':>10}")
    print(f"{'baseline: JSON message':<24}{baseline:>18.1f}{'':>20}{baseline:>10.1f}")
    for url in urls:
        for form, table, index in measure(url, rows):
            print(f"{form:<24}{table:>18.1f}{index:>20.1f}{table + index:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
