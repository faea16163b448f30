"""How long a retention run and an erasure take, on each physical form of the store.

Usage:
    .venv/bin/python bench/retention.py --url postgresql://... [--form plain|timescale]
        [--devices N] [--days D]

--url names a server where a scratch database may be created (a superuser URL; dropped at
the end). The store is filled through the platform's writer with one reading per device,
metric (two) and hour over D days, each device enrolled for one patient; then a retention
run by a fixed clock keeps the last half of the days, and one patient is erased. The
baseline printed beside each figure, measured in the same run, is a bare
`DELETE FROM readings WHERE measured_at < cutoff` of the same rows in a copy of the store
(what the job adds: batches, rollups, the other tables).
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ehealthlab.store.erasure import erase_patient
from ehealthlab.store.migrate import migrate
from ehealthlab.store.readings import ReadingRow, ReadingWriter
from ehealthlab.store.reference import load_municipalities
from ehealthlab.store.retention import run_retention

START = datetime(2026, 1, 1, tzinfo=UTC)


def _database(admin: str, name: str) -> str:
    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


def fill(url: str, form: str, devices: int, days: int) -> tuple[int, list[uuid.UUID]]:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, form)  # type: ignore[arg-type]
        load_municipalities(conn)
        row = conn.execute(
            "INSERT INTO organisations (kind, name) VALUES ('startup', 'S'), ('provider', 'P')"
            " RETURNING id"
        ).fetchall()
        startup, provider = row[0][0], row[1][0]
        patients = []
        for d in range(devices):
            device = f"dev-{d:05d}"
            conn.execute(
                "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                " VALUES (%s, %s, 'blood_pressure_monitor', 'M', %s)",
                (device, startup, device),
            )
            patient = conn.execute(
                "INSERT INTO patients (organisation_id, identifier_hash, label)"
                " VALUES (%s, %s, 'p') RETURNING id",
                (provider, uuid.uuid4().bytes),
            ).fetchone()
            assert patient is not None
            patients.append(patient[0])
            conn.execute(
                "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
                " VALUES (%s, %s, '001272', '2025-12-01')",
                (patient[0], device),
            )
        writer = ReadingWriter(conn)
        total = 0
        for day in range(days):
            batch = []
            for d in range(devices):
                for hour in range(0, 24, 2):
                    at = START + timedelta(days=day, hours=hour, minutes=d % 60)
                    for metric in ("bp_systolic", "bp_diastolic"):
                        batch.append(ReadingRow(f"dev-{d:05d}", metric, at, 120.0, at,
                                                at + timedelta(seconds=5), total, "m", 0.0,
                                                False))  # fmt: skip
                        total += 1
            writer.write(batch)
        return total, patients


def _copy_database(admin_url: str, name: str, copy: str) -> None:
    """CREATE DATABASE ... TEMPLATE, retried: TimescaleDB's scheduler visits a new database
    for a moment, and a template must have no session."""
    for attempt in range(20):
        try:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--form", choices=("plain", "timescale"), default="timescale")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=int, default=60)
    args = parser.parse_args()
    name = "ehl_bench_retention_" + uuid.uuid4().hex[:8]
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _database(args.url, name)
    copy = name + "_copy"
    try:
        started = time.perf_counter()
        total, patients = fill(url, args.form, args.devices, args.days)
        print(f"form {args.form}: {total:,} readings, {args.devices} devices, {args.days} days"
              f" (filled in {time.perf_counter() - started:.0f} s)")  # fmt: skip
        _copy_database(args.url, name, copy)
        now = START + timedelta(days=args.days, hours=12)
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            report = run_retention(conn, now=now, days=args.days // 2, run_by="bench")
            took = time.perf_counter() - started
            gone = report.deleted.get("readings", 0)
            print(f"retention: {gone:,} readings deleted ({report.chunks_dropped} chunks dropped"
                  f" whole) in {took:.2f} s = {gone / took:,.0f} readings/s")  # fmt: skip
            started = time.perf_counter()
            erased = erase_patient(conn, patients[-1], erased_by="bench")
            took = time.perf_counter() - started
            print(f"erasure: {erased.counts['readings']:,} readings of one patient in {took:.2f} s")
        with psycopg.connect(_database(args.url, copy), autocommit=True) as conn:
            started = time.perf_counter()
            cur = conn.execute("DELETE FROM readings WHERE measured_at < %s", (report.cutoff,))
            took = time.perf_counter() - started
            print(f"baseline, one bare DELETE: {cur.rowcount:,} readings in {took:.2f} s"
                  " (rollups of device and patient left stale)")  # fmt: skip
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            for db in (name, copy):
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
