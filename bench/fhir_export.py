"""How fast, and in how much memory, a Bulk Data export streams Observations to NDJSON.

Usage:
    .venv/bin/python bench/fhir_export.py [--observations N] [--baseline-sample M]
                                          [--url postgresql://SUPERUSER@HOST:PORT/postgres]

Fills a scratch database (on a private PostgreSQL started for the run, or on the server
--url names) with a year of a pilot of 1,000 devices — 600 blood-pressure cuffs (a panel and a
heart rate per inflation), 200 pulse oximeters, 200 scales, 90 % enrolled — enough readings
for N Observations (default 1,000,000), then measures, each in a fresh process so that its
peak RSS is its own:

- export: the production path (`ExportJobRun`: one snapshot, server-side cursor, fast.py's
  JSON, NDJSON files), a system-level `_type=Observation` job, end to end;
- rows only: the same cursor read without making anything of the rows (the floor);
- baseline, models: the same stream, each Observation built and validated as a
  fhir.resources R4B model and written with `model_dump_json()`, on the first M Observations
  (default 50,000) — at its rate the whole export would take minutes;
- baseline, fetchall: every row fetched at once (client-side cursor), then the fast path:
  as fast, but its memory grows with the export.

Figures depend on the machine (2 shared cores here); compare the rows of one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from pydantic import SecretStr

from ehealthlab.fhir.bulk import store
from ehealthlab.fhir.bulk.export import ExportRequest
from ehealthlab.fhir.bulk.store import ExportScope
from ehealthlab.fhir.bulk.worker import ExportConfig, ExportJobRun, job_directory
from ehealthlab.fhir.mapping import r4b
from ehealthlab.fhir.mapping.codes import DIASTOLIC, SYSTOLIC
from ehealthlab.fhir.mapping.fast import dumps, observations_json
from ehealthlab.fhir.mapping.rows import BloodPressureReadings, ReadingRecord
from ehealthlab.settings import Settings
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, place_for
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

#: what one round (every device measuring once) gives
CUFFS, OXIMETERS, SCALES = 600, 200, 200
OBSERVATIONS_PER_ROUND = CUFFS * 2 + OXIMETERS * 2 + SCALES
START = datetime(2025, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)

_FILL = """
WITH m(device_type, metric, ord, lo, hi) AS (VALUES
    ('blood_pressure_monitor', 'bp_systolic', 0, 95, 175),
    ('blood_pressure_monitor', 'bp_diastolic', 1, 55, 105),
    ('blood_pressure_monitor', 'heart_rate', 2, 50, 110),
    ('pulse_oximeter', 'spo2', 0, 90, 100),
    ('pulse_oximeter', 'heart_rate', 1, 50, 110),
    ('weighing_scale', 'body_weight', 0, 50, 120))
INSERT INTO readings (device_id, metric, at, value, measured_at, received_at, seq, msg_id,
                      clock_offset_s, clock_corrected, reported_unit, patient_id)
SELECT d.device_id, m.metric, t.at,
       m.lo + abs(hashtext(d.device_id || g::text || m.metric)) %% (m.hi - m.lo),
       t.at, t.at + interval '7 seconds', g * 3 + m.ord, 'bench-' || g, 0.5, false, NULL,
       e.patient_id
FROM devices d
JOIN m ON m.device_type = d.device_type
CROSS JOIN generate_series(0, %(rounds)s - 1) AS g
CROSS JOIN LATERAL (SELECT %(start)s::timestamptz + g * %(step)s::interval
                           + (abs(hashtext(d.device_id)) %% 3600) * interval '1 second' AS at) t
LEFT JOIN enrolments e ON e.device_id = d.device_id
"""


def fill(url: str, observations: int) -> int:
    """Migrate and fill the database; returns the number of Observations it holds."""

    rounds = -(-observations // OBSERVATIONS_PER_ROUND)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        load_municipalities(conn)
        startup, provider = (
            conn.execute(
                "INSERT INTO organisations (kind, name) VALUES (%s, %s) RETURNING id",
                (kind, f"bench {kind}"),
            ).fetchone()[0]
            for kind in ("startup", "provider")
        )
        conn.execute("INSERT INTO organisations (kind, name) VALUES ('operator', 'CMTo')")
        kinds = (
            [("bpm", "blood_pressure_monitor")] * CUFFS
            + [("oxi", "pulse_oximeter")] * (OXIMETERS)
            + [("scale", "weighing_scale")] * SCALES
        )
        with conn.transaction():
            for i, (prefix, device_type) in enumerate(kinds):
                device_id = f"{prefix}-{i:016x}"
                conn.execute(
                    "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                    " VALUES (%s, %s, %s, 'M', %s)",
                    (device_id, startup, device_type, device_id),
                )
                if i % 10 == 9:  # one in ten is nobody's yet: unassigned readings
                    continue
                patient = conn.execute(
                    "INSERT INTO patients (organisation_id, identifier_hash, label)"
                    " VALUES (%s, %s, 'p') RETURNING id",
                    (provider, uuid.uuid4().bytes * 2),
                ).fetchone()[0]
                conn.execute(
                    "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
                    " VALUES (%s, %s, '001272', '2024-12-01')",
                    (patient, device_id),
                )
        months = [START + timedelta(days=d) for d in range(0, 400, 20)]
        conn.execute("SELECT ehl_ensure_reading_partitions(%s)", (months,))
        step = YEAR / rounds
        conn.execute(_FILL, {"rounds": rounds, "start": START, "step": step})
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT (SELECT count(*) FROM readings WHERE metric NOT IN"
            " ('bp_systolic', 'bp_diastolic')) + (SELECT count(*) FROM (SELECT DISTINCT"
            " device_id, at FROM readings WHERE metric IN ('bp_systolic', 'bp_diastolic')) s),"
            " (SELECT count(*) FROM readings)"
        ).fetchone()
        print(f"store: {row[1]:,} readings, {row[0]:,} Observations, {rounds} rounds")
        return int(row[0])


# -- the measured paths, each run in a child process ------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _settings(url: str, state_dir: str) -> Settings:
    return Settings(database_url=SecretStr(url), state_dir=Path(state_dir))


def run_export(url: str, state_dir: str, _limit: int) -> dict[str, Any]:
    """The production path, end to end, on a job written straight into the store."""

    settings = _settings(url, state_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        operator = conn.execute("SELECT id FROM organisations WHERE kind = 'operator'").fetchone()
        job = store.create_job(
            conn, operator[0], ExportRequest("system", ("Observation",), None), None, "bench"
        )
    before = _peak_rss_mib()
    started = time.perf_counter()
    ExportJobRun(settings, job.id, "bench", threading.Event(), ExportConfig()).run()
    seconds = time.perf_counter() - started
    peak = _peak_rss_mib()
    with psycopg.connect(url) as conn:
        done = store.get_job(conn, job.id)
    assert done is not None and done.status == "completed", done
    directory = job_directory(settings, job.id)
    size = sum(p.stat().st_size for p in directory.iterdir())
    lines = 0
    for path in directory.iterdir():
        with path.open("rb") as data:
            lines += sum(chunk.count(b"\n") for chunk in iter(lambda: data.read(1 << 20), b""))
    assert lines == done.written
    return {
        "count": done.written,
        "seconds": seconds,
        "rss": peak,
        "rss_before": before,
        "bytes": size,
        "files": len(done.files),
    }


def _stream(url: str, limit: int, map_row: Callable[[Any], Any] | None) -> dict[str, Any]:
    """The export's own cursor and pairing, with `map_row` turning each Observation into
    bytes (None: rows only)."""

    before = _peak_rss_mib()
    started = time.perf_counter()
    count = 0
    with psycopg.connect(url) as conn, conn.transaction():
        batches = store.stream_rows(conn, "Observation", ExportScope(None, False), None)
        if map_row is None:
            for rows in batches:
                count += len(rows)
        else:
            with open(Path(tempfile.gettempdir()) / f"bench-{uuid.uuid4().hex}", "wb") as out:
                for source in _sources(ReadingRecord(*row) for rows in batches for row in rows):
                    out.write(map_row(source))
                    out.write(b"\n")
                    count += 1
                    if count == limit:
                        break
                Path(out.name).unlink()
    return {
        "count": count,
        "seconds": time.perf_counter() - started,
        "rss": _peak_rss_mib(),
        "rss_before": before,
    }


def _sources(records: Any) -> Any:
    """What export.observations_ndjson pairs, before it maps (for the models baseline)."""

    key, systolic, diastolic = None, None, None
    for record in records:
        if record.metric not in (SYSTOLIC, DIASTOLIC):
            yield record
            continue
        here = (record.device_id, record.at)
        if here != key:
            if systolic or diastolic:
                yield BloodPressureReadings(systolic, diastolic)
            key, systolic, diastolic = here, None, None
        if record.metric == SYSTOLIC:
            systolic = record
        else:
            diastolic = record
    if systolic or diastolic:
        yield BloodPressureReadings(systolic, diastolic)


def run_rows_only(url: str, _state_dir: str, limit: int) -> dict[str, Any]:
    return _stream(url, limit, None)


def run_models(url: str, _state_dir: str, limit: int) -> dict[str, Any]:

    return _stream(url, limit, lambda source: r4b.observation(source).model_dump_json().encode())


def run_fetchall(url: str, _state_dir: str, _limit: int) -> dict[str, Any]:

    before = _peak_rss_mib()
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        query = store.observation_query(ExportScope(None, False), None)
        records = [ReadingRecord(*row) for row in conn.execute(query).fetchall()]
    count = 0
    with open(Path(tempfile.gettempdir()) / f"bench-{uuid.uuid4().hex}", "wb") as out:
        for observation in observations_json(records):
            out.write(dumps(observation))
            out.write(b"\n")
            count += 1
        Path(out.name).unlink()
    return {
        "count": count,
        "seconds": time.perf_counter() - started,
        "rss": _peak_rss_mib(),
        "rss_before": before,
    }


def _child(target: Callable[..., dict[str, Any]], args: tuple[Any, ...], queue: Any) -> None:
    queue.put(target(*args))


def in_child(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`target(*args)` in a fresh process (its peak RSS is then its own)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


# -- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--baseline-sample", type=int, default=50_000)
    parser.add_argument("--url", help="superuser URL of a server to use (default: a private one)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="ehl-bench-export-"))
    server = None
    try:
        if args.url:
            admin_url = args.url
        else:
            server = PostgresServer(
                place_for(ServiceAccount.for_server("postgres"), scratch / "postgres"),
                parameters={"shared_buffers": "512MB"},
            )
            start_on_free_port(server)
            admin_url = server.admin_url
        name = "ehl_bench_export_" + uuid.uuid4().hex[:8]
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
        started = time.perf_counter()
        expected = fill(url, args.observations)
        print(f"filled in {time.perf_counter() - started:.0f} s")
        state = str(scratch / "state")
        results = [
            ("export: fast path, streamed", in_child(run_export, url, state, 0)),
            ("rows only (the cursor's floor)", in_child(run_rows_only, url, state, 0)),
            (
                "baseline: R4B models, streamed",
                in_child(run_models, url, state, args.baseline_sample),
            ),
            ("baseline: fetchall, fast path", in_child(run_fetchall, url, state, 0)),
        ]
        export = results[0][1]
        assert export["count"] == expected, (export["count"], expected)
        print(
            f"\n{'path':<34}{'resources':>12}{'seconds':>10}{'resources/s':>14}"
            f"{'peak RSS MiB':>14}{'before MiB':>12}"
        )
        for label, r in results:
            rate = r["count"] / r["seconds"]
            print(
                f"{label:<34}{r['count']:>12,}{r['seconds']:>10.1f}{rate:>14,.0f}"
                f"{r['rss']:>14,.0f}{r['rss_before']:>12,.0f}"
            )
        print(
            f"\nexport wrote {export['bytes'] / 2**20:,.0f} MiB in {export['files']} files "
            f"({export['bytes'] / export['count']:.0f} B per Observation); "
            f"goal >= 50,000 resources/s: "
            f"{'met' if export['count'] / export['seconds'] >= 50_000 else 'NOT met'}"
        )
        models = results[2][1]
        speedup = (export["count"] / export["seconds"]) / (models["count"] / models["seconds"])
        print(f"fast path / models: {speedup:.1f}x")
    finally:
        if server is not None:
            server.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
