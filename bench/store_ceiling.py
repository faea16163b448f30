"""The store's ceiling for readings in messages of 50 (or of N): what PostgreSQL takes on this
machine with no broker, no publishers and no validation, beside what ingest's transaction
makes of the same readings.

Run:  .venv/bin/python bench/store_ceiling.py [--seconds S] [--processes P] [--per-message N]

A private PostgreSQL as bench/ingest.py starts it (fsync on), a migrated template database
with the same pilot (a start-up's blood-pressure monitors, each enrolled to a patient), and
a fresh copy of it for each level. P processes (2: ingest's two workers) each write their own
devices' readings, all prepared before the clock starts, for S seconds; each commits a batch
as full as a worker's can be (`batch_max_readings`, 10,000: 200 messages of 50; or
`batch_max_messages`, 1,000 single-reading messages). Levels, in one run:
1. bare COPY: the rows into a table of the readings' columns with no key, index or trigger
   (what the disk and the WAL take);
2. COPY into `readings` itself: its primary key, its patient index and its hourly roll-up
   trigger, with `patient_id` filled in by the writer (what the schema takes);
3. ingest's transaction (`store_judged`, as a worker runs it): staging COPY, deduplication,
   attribution, message claims and log, alerts, last-seen, on messages judged beforehand.
Readings/s = readings committed by all processes / the longest process's time. The goal of
issue 13 (50,000 readings/s in messages of 50) is printed beside each, and so is the CPU the
writing processes spent a message (Python and psycopg: the client's share of a batch).
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from ingest_messages import DEVICE_TYPE, TEMPLATE, encode_message, reading_items
from ingest_stack import fill_pilot
from psycopg import sql

from ehealthlab.gc_tuning import tune_garbage_collector
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import JudgedMessage, KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, place_for
from ehealthlab.store.migrate import migrate
from ehealthlab.store.readings import ReadingRow, ReadingWriter
from ehealthlab.store.reference import load_municipalities

GOAL = 50_000
DEFAULTS = IngestConfig()
DEVICES_PER_PROCESS = 40
_COLUMNS = ("device_id", "metric", "at", "value", "measured_at", "received_at", "seq",
            "msg_id", "clock_offset_s", "clock_corrected", "reported_unit")  # fmt: skip
_BARE_DDL = (
    "CREATE TABLE bare_readings (device_id text, metric text, at timestamptz,"
    " value double precision, measured_at timestamptz, received_at timestamptz, seq bigint,"
    " msg_id text, clock_offset_s real, clock_corrected boolean, reported_unit text)"
)


def messages_for(
    devices: list[str], count: int, base_epoch: int, per_message: int
) -> list[JudgedMessage]:
    """`count` messages of `per_message` readings, spread over `devices`, judged as ingest
    judges them."""
    received_at = datetime.now(UTC)
    known = KnownDevice(DEVICE_TYPE)
    judged = []
    next_reading = dict.fromkeys(devices, 0)
    for m in range(count):
        device = devices[m % len(devices)]
        index = int(device.rsplit("-", 1)[1])
        items = reading_items(next_reading[device], per_message, index, base_epoch)
        next_reading[device] += per_message
        message = ReceivedMessage(
            topic=f"ehl/v1/devices/{device}/readings",
            payload=encode_message(f"{device}:{m}", items),
            qos=1, retain=False, mid=m % 65535 + 1, received_at=received_at,
            broker_stamped=True,
        )  # fmt: skip
        outcome = judge(message, lambda _: known)
        if len(outcome.readings) != per_message:
            raise SystemExit(f"a bench message was not accepted whole: {outcome.rejections}")
        judged.append(outcome)
    return judged


def copy_rows(conn: psycopg.Connection[Any], table: str, rows: list[ReadingRow],
              patients: dict[str, uuid.UUID] | None) -> None:  # fmt: skip
    columns = _COLUMNS + (("patient_id",) if patients is not None else ())
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    types = ["text", "text", "timestamptz", "float8", "timestamptz", "timestamptz", "int8",
             "text", "float4", "bool", "text"]  # fmt: skip
    if patients is not None:
        types.append("uuid")
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(types)
        for r in rows:
            row: tuple[Any, ...] = (
                r.device_id, r.metric, r.at, r.value, r.measured_at, r.received_at, r.seq,
                r.msg_id, r.clock_offset_s, r.clock_corrected, r.reported_unit,
            )  # fmt: skip
            if patients is not None:
                row += (patients[r.device_id],)
            copy.write_row(row)


@dataclass(frozen=True)
class Plan:
    """What one process of a level writes."""

    level: str
    url: str
    devices: list[str]
    count: int
    base_epoch: int
    seconds: float
    per_message: int

    @property
    def batch_messages(self) -> int:
        """As many messages as a worker's fullest batch holds."""
        by_readings = DEFAULTS.batch_max_readings // self.per_message
        return max(1, min(DEFAULTS.batch_max_messages, by_readings))


def run_level(plan: Plan, ready: Any, go: Any, results: Any) -> None:
    """One process of a level: prepare, wait for the start, write batches until the time is
    up or the messages run out; report (readings committed, seconds, ran out, CPU seconds)."""
    level, url, devices, count = plan.level, plan.url, plan.devices, plan.count
    base_epoch, seconds, per_message = plan.base_epoch, plan.seconds, plan.per_message
    judged = messages_for(devices, count, base_epoch, per_message)
    # as a worker does once started; here also after the prepared messages, which a worker
    # never holds and which every full collection would otherwise walk
    tune_garbage_collector()
    size = plan.batch_messages
    batches = [judged[i : i + size] for i in range(0, count, size)]
    with psycopg.connect(url) as conn:
        patients: dict[str, uuid.UUID] = dict(conn.execute(
            "SELECT device_id, patient_id FROM enrolments WHERE device_id = ANY(%s)", (devices,)
        ).fetchall())  # fmt: skip
        conn.commit()
        writer = ReadingWriter(conn)
        writer.prepare([row for item in judged for row in item.readings])  # partitions, staging
        conn.commit()
        step: Callable[[list[JudgedMessage]], None]
        if level == "bare":

            def step(batch: list[JudgedMessage]) -> None:
                copy_rows(conn, "bare_readings", [r for m in batch for r in m.readings], None)
                conn.commit()
        elif level in {"keys", "readings"}:

            def step(batch: list[JudgedMessage]) -> None:
                copy_rows(conn, "readings", [r for m in batch for r in m.readings], patients)
                conn.commit()
        else:
            conn.autocommit = True  # store_judged opens its own transactions, as in a worker

            def step(batch: list[JudgedMessage]) -> None:
                store_judged(conn, writer, batch, DEFAULT_RULES)

        ready.put(True)
        go.wait()
        start, cpu_start = time.perf_counter(), time.process_time()
        deadline = start + seconds
        written = 0
        for batch in batches:
            step(batch)
            written += len(batch) * per_message
            if time.perf_counter() >= deadline:
                break
        results.put((written, time.perf_counter() - start, written == count * per_message,
                     time.process_time() - cpu_start))  # fmt: skip


LEVELS = (
    ("bare", "bare COPY (no key, index, trigger)"),
    ("keys", "COPY into `readings`, its roll-up triggers off"),
    ("readings", "COPY into `readings`"),
    ("ingest", "ingest's transaction (`store_judged`)"),
)


def make_template(server: PostgresServer, devices: list[str], base_epoch: int) -> None:
    server.create_database(TEMPLATE)
    first_day = datetime.fromtimestamp(base_epoch, UTC).date() - timedelta(days=2)
    with psycopg.connect(server.url(TEMPLATE), autocommit=True) as conn:
        migrate(conn)
        load_municipalities(conn)
        fill_pilot(conn, devices, first_day)
        conn.execute(_BARE_DDL)
        # every month the readings fall in: no level pays for a partition
        months = [datetime.fromtimestamp(base_epoch, UTC), datetime.now(UTC)]
        conn.execute("SELECT ehl_ensure_reading_partitions(%s)", (months,))


@dataclass(frozen=True)
class LevelResult:
    readings_per_s: float
    ran_out: bool
    client_cpu_s: float  # all writing processes
    readings: int


def run(server: PostgresServer, level: str, plan: Plan, processes: int) -> LevelResult:
    """What one level made of its readings, on a fresh copy of the template."""
    database = f"ehl_bench_{level}"
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(database), sql.Identifier(TEMPLATE)))  # fmt: skip
    if level == "keys":
        with psycopg.connect(server.url(database), autocommit=True) as conn:
            conn.execute("ALTER TABLE readings DISABLE TRIGGER USER")
    context = multiprocessing.get_context("fork")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    plans = [replace(plan, url=server.url(database), devices=plan.devices[p::processes])
             for p in range(processes)]  # fmt: skip
    workers = [context.Process(target=run_level, args=(mine, ready, go, results))
               for mine in plans]  # fmt: skip
    for worker in workers:
        worker.start()
    for _ in workers:  # each has judged its messages: judging is not what is measured
        ready.get(timeout=600)
    go.set()
    outcomes = [results.get(timeout=plan.seconds * 10 + 600) for _ in workers]
    for worker in workers:
        worker.join()
    readings = sum(o[0] for o in outcomes)
    with psycopg.connect(server.url(database)) as conn:
        stored = conn.execute("SELECT count(*) FROM readings").fetchone()
        rolled = conn.execute("SELECT sum(readings) FROM readings_hourly").fetchone()
    if level != "bare" and (stored is None or stored[0] != readings):
        raise SystemExit(f"{level}: {stored} readings stored, {readings} written")
    if level in {"readings", "ingest"} and (rolled is None or rolled[0] != readings):
        raise SystemExit(f"{level}: the roll-up counts {rolled}, {readings} written")
    return LevelResult(readings / max(o[1] for o in outcomes), any(o[2] for o in outcomes),
                       sum(o[3] for o in outcomes), readings)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--per-message", type=int, default=50, metavar="N",
                        help="readings a message (1..10000)")  # fmt: skip
    parser.add_argument("--messages", type=int, default=None,
                        help="messages prepared per process (a bound; default 400,000 "
                        "readings' worth, at most 60,000)")  # fmt: skip
    options = parser.parse_args()
    per_message = options.per_message
    if not 1 <= per_message <= DEFAULTS.batch_max_readings:
        parser.error(f"--per-message must be 1..{DEFAULTS.batch_max_readings}")
    messages = options.messages or max(1, min(60_000, 400_000 // per_message))
    scratch = Path(tempfile.mkdtemp(prefix="ehl-bench-store-"))
    server = PostgresServer(place_for(ServiceAccount.for_server("postgres"), scratch / "pg"),
                            fsync=True)  # fmt: skip
    try:
        start_on_free_port(server)
        devices = [f"bench-bpm-{i:04d}" for i in range(DEVICES_PER_PROCESS * options.processes)]
        now = int(time.time())
        base_epoch = now - now % 60 - 30 * 86400  # in the past: never "in the future"
        make_template(server, devices, base_epoch)
        plan = Plan("", "", devices, messages, base_epoch, options.seconds, per_message)
        print(f"{options.processes} processes, {DEVICES_PER_PROCESS} devices each, messages of "
              f"{per_message} readings, a commit every {plan.batch_messages:,} messages, "
              f"{options.seconds:.0f} s per level, PostgreSQL with fsync on")  # fmt: skip
        print(f"| level | readings/s | against 50,000 | messages of {per_message}/s"
              " | writers' CPU a message |")  # fmt: skip
        print("|---|---:|---:|---:|---:|")
        for level, label in LEVELS:
            got = run(server, level, replace(plan, level=level), options.processes)
            note = " (ran out of messages: raise --messages)" if got.ran_out else ""
            cpu_us = got.client_cpu_s / (got.readings / per_message) * 1e6
            print(
                f"| {label} | {got.readings_per_s:,.0f} | {got.readings_per_s / GOAL:.2f}x"
                f" | {got.readings_per_s / per_message:,.0f} | {cpu_us:,.1f} µs |{note}"
            )
    finally:
        server.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
