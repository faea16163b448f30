"""The evaluation core on a year of a pilot: 10,000 patients, about 20 million readings.

Usage:
    .venv/bin/python bench/evaluation.py [--root DIR] [--reuse] [--patients N] [--days N]
        [--timescale-url postgresql://SUPERUSER@HOST:PORT/postgres] [--only plain|timescale]
        [--remove]

Goal (issue 10): `ehealthlab evaluate` over the year in under 60 s and 2 GiB, on both store
forms. The store (default /var/tmp/ehl-eval-bench, outside the repository) is a private
PostgreSQL cluster; `--timescale-url` builds the same data in the TimescaleDB form on that
server (database `ehl_eval_bench`). `--reuse` takes what a previous run left.

The pilot: N patients in 60 municipalities of every SNAI class, 3 start-ups, 5 providers;
each patient has a blood-pressure cuff planned twice a day (systolic, diastolic, pulse: 6
readings a day) and measures on 92% of the slots; 1 reading in 100 is clock-corrected, 1 in
40 arrives late (store-and-forward, hours), 1 in 200 is sent twice (a duplicate), 1 in 500
rejected; every 10th patient joined after the start and every 25th left early; alerts on
2% of days, most acknowledged; three overlapping mini-pilots (the k-th: start-ups 1..k, two
thirds of the municipalities, from the k-th quarter on). The registry is written by SQL on
the server; the readings are generated there (generate_series) and loaded by binary COPY,
month by month.

Each evaluation runs in a child process (its peak memory is its own); its figures are
printed beside baselines of the same run on the same store:
- the bare scan: `count(*)` and a sum over the period's readings (what PostgreSQL needs to
  read them at all);
- the fetch, query by query (enrolments, the binary COPY of readings, seqs per day, alerts);
- the numpy computation per grouping.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ehealthlab.evaluation.compute import evaluate
from ehealthlab.evaluation.dataset import GROUPINGS, Period
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.service import economic_model
from ehealthlab.settings import Settings
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, place_for
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

DATABASE = "ehl_eval_bench"
DATA_VERSION = 2
START = date(2026, 1, 1)
GOAL_SECONDS = 60.0
GOAL_BYTES = 2 << 30
_SERVERS: list[PostgresServer] = []  # started here, stopped (and removed) with --remove

_REGISTRY = """
SELECT setseed(0.42);
INSERT INTO organisations (kind, name)
SELECT 'startup', 'bench start-up ' || i FROM generate_series(1, 3) i;
INSERT INTO organisations (kind, name)
SELECT 'provider', 'bench provider ' || i FROM generate_series(1, 5) i;
CREATE TEMPORARY TABLE bench_places AS
SELECT istat_code, row_number() OVER (ORDER BY snai_class, istat_code) - 1 AS n
FROM (SELECT istat_code, snai_class,
             row_number() OVER (PARTITION BY snai_class ORDER BY istat_code) AS k
      FROM municipalities) m
WHERE k <= 10;
INSERT INTO devices (device_id, organisation_id, device_type, model, serial)
SELECT 'bench-' || lpad(i::text, 6, '0'),
       (SELECT id FROM organisations WHERE name = 'bench start-up ' || (1 + i %% 3)),
       'blood_pressure_monitor', 'B1', i::text
FROM generate_series(1, %(patients)s) i;
INSERT INTO patients (organisation_id, identifier_hash, label)
SELECT (SELECT id FROM organisations WHERE name = 'bench provider ' || (1 + i %% 5)),
       decode(lpad(to_hex(i), 8, '0'), 'hex'), 'bench ' || i
FROM generate_series(1, %(patients)s) i;
INSERT INTO enrolments (patient_id, device_id, municipality, start_date, end_date, care_plan)
SELECT p.id, 'bench-' || lpad(p.i::text, 6, '0'),
       (SELECT istat_code FROM bench_places WHERE n = p.i %% (SELECT count(*) FROM bench_places)),
       %(start)s::date + (CASE WHEN p.i %% 10 = 0 THEN p.i %% %(quarter)s ELSE 0 END)::int,
       CASE WHEN p.i %% 25 = 0 THEN %(start)s::date + (%(days)s - 1 - p.i %% %(quarter)s)::int END,
       '{"bp_systolic": 2, "bp_diastolic": 2, "heart_rate": 2}'
FROM (SELECT id, row_number() OVER (ORDER BY label COLLATE "C") AS i FROM patients
      WHERE label LIKE 'bench %%') p;
INSERT INTO mini_pilots (name, start_date, end_date)
SELECT 'bench mini-pilot ' || i, %(start)s::date + (i - 1) * (%(quarter)s)::int,
       %(start)s::date + (%(days)s - 1)::int
FROM generate_series(1, 3) i;
INSERT INTO mini_pilot_startups (mini_pilot_id, organisation_id)
SELECT m.id, o.id FROM mini_pilots m JOIN organisations o ON o.kind = 'startup'
WHERE o.name <= 'bench start-up ' || substr(m.name, 18);
INSERT INTO mini_pilot_municipalities (mini_pilot_id, istat_code)
SELECT m.id, b.istat_code FROM mini_pilots m JOIN bench_places b
  ON b.n %% 3 <> substr(m.name, 18)::int %% 3;
"""

# one month of readings: every device, every day, two slots, three metrics
_COLUMNS = ("device_id, metric, at, value, measured_at, received_at, seq, msg_id,"
            " clock_offset_s, clock_corrected, patient_id")  # fmt: skip
_MONTH = """
SELECT e.device_id, m.metric, t.at,
       (m.base + (hashtext(e.device_id || t.at::text) %% 20))::double precision,
       t.at, t.at + make_interval(secs => CASE WHEN t.h %% 40 = 0 THEN 3600 + t.h %% 20000
                                             ELSE 2 + t.h %% 50 END),
       ((t.d * 2 + t.slot) * 3 + m.k)::bigint, e.device_id || '-' || t.d || '-' || t.slot,
       0::real, t.h %% 100 = 0, e.patient_id
FROM enrolments e
CROSS JOIN LATERAL (
    SELECT d, slot, abs(h) AS h,
           day_start + make_interval(hours => 7 + slot * 12, mins => abs(h) %% 60) AS at
    FROM (SELECT d, slot, hashtext(e.device_id || ':' || d || ':' || slot) AS h,
                 ((%(start)s::date + d)::timestamp AT TIME ZONE 'Europe/Rome') AS day_start
          FROM generate_series(%(first)s::int, %(last)s::int) d, generate_series(0, 1) slot) s
    WHERE abs(h) %% 100 < 92
      AND %(start)s::date + d BETWEEN e.start_date AND coalesce(e.end_date, 'infinity')
) t
CROSS JOIN (VALUES ('bp_systolic', 120, 0), ('bp_diastolic', 75, 1), ('heart_rate', 65, 2))
    AS m(metric, base, k)
WHERE e.device_id LIKE 'bench-%%'
"""


def _copy_month(
    source: psycopg.Connection[Any], target: psycopg.Connection[Any], params: dict[str, Any]
) -> None:
    """A month of readings generated on the server, loaded into the store by binary COPY
    (as a bulk import would load them): one COPY TO STDOUT streamed into one COPY FROM STDIN."""
    query = psycopg.ClientCursor(source).mogrify(_MONTH, params)  # COPY takes no parameters
    with (
        source.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as out,
        target.cursor().copy(f"COPY readings ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as into,
    ):
        for block in out:
            into.write(block)


_EXTRAS = """
INSERT INTO duplicate_readings (received_at, device_id, metric, at, measured_at, seq, msg_id)
SELECT received_at + interval '10 minutes', device_id, metric, at, measured_at, seq, msg_id
FROM readings WHERE abs(hashtext(msg_id || metric)) %% 200 = 0;
INSERT INTO rejected_readings (received_at, device_id, msg_id, item_index, seq, metric, at,
                               measured_at, reason, detail, payload, payload_bytes)
SELECT received_at, device_id, msg_id, 0, seq + 1000000000, metric, at, measured_at,
       'out_of_range', 'bench', '\\x00', 1
FROM readings WHERE abs(hashtext(msg_id || metric || 'r')) %% 500 = 0;
INSERT INTO alerts (patient_id, rule, day, device_id, metric, at, value, measured_at,
                    raised_at, acknowledged_at)
SELECT DISTINCT ON (patient_id, ehl_pilot_day(measured_at))
       patient_id, 'bp_systolic_high', ehl_pilot_day(measured_at), device_id, metric, at, value,
       measured_at, received_at,
       CASE WHEN abs(hashtext(msg_id)) %% 10 < 8
            THEN received_at + make_interval(mins => abs(hashtext(msg_id)) %% 3000) END
FROM readings
WHERE metric = 'bp_systolic' AND abs(hashtext(msg_id || 'a')) %% 100 < 2
ORDER BY patient_id, ehl_pilot_day(measured_at), at;
ANALYZE;
"""


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def build_store(url: str, form: str, patients: int, days: int) -> dict[str, Any]:
    """Migrate, load the reference data and write the pilot; returns what was built."""
    started = time.perf_counter()
    with (
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url, autocommit=True) as loader,
    ):
        migrate(conn, form)
        load_municipalities(conn)
        conn.execute("SET maintenance_work_mem = '1GB'")
        # a late start and an early end each within a quarter of the period: never crossing
        params = {"patients": patients, "start": START, "days": days, "quarter": max(days // 4, 1)}
        for statement in _REGISTRY.split(";\n"):
            if statement.strip():
                conn.execute(statement, params)
        end = START + timedelta(days=days)
        month = START.replace(day=1)
        months = []
        while month < end:
            months.append(month)
            month = (month + timedelta(days=32)).replace(day=1)
        conn.execute(
            "SELECT ehl_ensure_reading_partitions(%s::timestamptz[])",
            ([f"{m.isoformat()}T12:00:00Z" for m in months],),
        )
        if form == "plain":  # the hourly rollup is not what the evaluation reads
            conn.execute("ALTER TABLE readings DISABLE TRIGGER readings_hourly_current")
        for first in range(0, days, 30):
            last = min(first + 29, days - 1)
            t = time.perf_counter()
            _copy_month(conn, loader, {**params, "first": first, "last": last})
            print(f"  days {first:3d}-{last:3d} written in {time.perf_counter() - t:5.1f} s",
                  flush=True)  # fmt: skip
        if form == "plain":
            conn.execute("ALTER TABLE readings ENABLE TRIGGER readings_hourly_current")
        for statement in _EXTRAS.split(";\n"):
            if statement.strip():
                conn.execute(statement, {})  # {}: '%%' is the modulo, as in the others
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    info = {"version": DATA_VERSION, "patients": patients, "days": days, "readings": readings,
            "form": form, "build_s": round(time.perf_counter() - started)}  # fmt: skip
    print(f"  {readings:,} readings in {info['build_s']} s", flush=True)
    return info


def plain_store(root: Path, patients: int, days: int, reuse: bool) -> tuple[str, dict[str, Any]]:
    state_file = root / "plain.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    parameters = {"shared_buffers": "2GB", "effective_cache_size": "8GB",
                  "max_wal_size": "8GB", "checkpoint_timeout": "30min", "jit": "off",
                  "work_mem": "256MB"}  # fmt: skip
    wanted = {"version": DATA_VERSION, "patients": patients, "days": days}
    if reuse and state and all(state["info"][k] == v for k, v in wanted.items()):
        server = PostgresServer(
            Path(state["directory"]), password=state["password"], parameters=parameters
        )
        start_on_free_port(server)
        _SERVERS.append(server)
        print(f"reusing the plain store in {server.directory}", flush=True)
        return server.url(DATABASE), state["info"]
    if state is not None:
        PostgresServer(Path(state["directory"]), password=state["password"]).remove()
    shutil.rmtree(root / "postgres", ignore_errors=True)
    server = PostgresServer(
        place_for(ServiceAccount.for_server("postgres"), root / "postgres"),
        parameters=parameters,
        database=DATABASE,
    )
    start_on_free_port(server)
    _SERVERS.append(server)
    print(f"building the plain store in {server.directory}", flush=True)
    info = build_store(server.url(DATABASE), "plain", patients, days)
    state_file.write_text(json.dumps(
        {"directory": str(server.directory), "password": server.password, "info": info}
    ))  # fmt: skip
    return server.url(DATABASE), info


def timescale_store(
    root: Path, admin_url: str, patients: int, days: int, reuse: bool
) -> tuple[str, dict[str, Any]]:
    state_file = root / "timescale.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    url = _with_database(admin_url, DATABASE)
    wanted = {"version": DATA_VERSION, "patients": patients, "days": days}
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if (
            reuse
            and exists.fetchone()
            and state
            and all(state["info"][k] == v for k, v in wanted.items())
        ):
            print(f"reusing the TimescaleDB store {DATABASE}", flush=True)
            return url, state["info"]
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    print(f"building the TimescaleDB store {DATABASE}", flush=True)
    info = build_store(url, "timescale", patients, days)
    state_file.write_text(json.dumps({"info": info}))
    return url, info


def _timed_query(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> float:
    started = time.perf_counter()
    conn.execute(sql, params).fetchall()
    return time.perf_counter() - started


def child(url: str, days: int, out: Any) -> None:
    """One measured evaluation, in its own process: fetch once, compute every grouping."""
    from ehealthlab.evaluation import fetch as fetch_module  # noqa: PLC0415 - child only

    period = Period(START, START + timedelta(days=days))
    settings = Settings(database_url=url)  # type: ignore[arg-type]
    figures: dict[str, Any] = {}
    with psycopg.connect(url) as conn:
        params = {"start": period.start, "end": period.end}
        figures["baseline_scan_s"] = _timed_query(
            conn,
            "SELECT count(*), sum(extract(epoch FROM received_at - measured_at)) FROM readings"
            " WHERE measured_at >= %(start)s AND measured_at < %(end)s",
            params,
        )
        conn.rollback()
        # each query of the fetch alone, for where the time goes
        query_params = {
            "first": period.start, "last": period.end - timedelta(days=1),
            "start": params["start"], "end": params["end"], "simulated": False,
            "metrics": ["bp_systolic", "bp_diastolic", "heart_rate", "spo2",
                        "respiratory_rate", "body_weight", "body_temperature",
                        "blood_glucose", "steps"],
        }  # fmt: skip
        for name in ("_ENROLMENT_ROWS", "_OTHER_SEQS", "_ALERTS"):
            figures[f"query{name.lower()}_s"] = _timed_query(
                conn, getattr(fetch_module, name), query_params
            )
            conn.rollback()
        started = time.perf_counter()
        data = fetch_dataset(conn, period, "real")
        figures["fetch_s"] = time.perf_counter() - started
    figures["peak_rss_fetch_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figures["readings"] = int(data.readings.day.size)
    figures["copy_and_rest_s"] = figures["fetch_s"] - sum(
        v for k, v in figures.items() if k.startswith("query_")
    )
    model = economic_model(settings)
    for grouping in GROUPINGS:
        started = time.perf_counter()
        result = evaluate(data, grouping, seed=1, economics=model)
        figures[f"compute_{grouping}_s"] = time.perf_counter() - started
        figures[f"groups_{grouping}"] = len(result.groups)
    figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.send(figures)


def measure(url: str, days: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=child, args=(url, days, sending))
    process.start()
    figures: dict[str, Any] = receiving.recv()
    process.join()
    return figures


def report(form: str, info: dict[str, Any], f: dict[str, Any]) -> None:
    worst = max(f[f"compute_{g}_s"] for g in GROUPINGS)
    one_evaluation = f["fetch_s"] + worst
    print(f"\n{form}: {info['readings']:,} readings, {info['patients']:,} patients, "
          f"{info['days']} days")  # fmt: skip
    print(f"  baseline: bare scan of the period's readings   {f['baseline_scan_s']:7.2f} s")
    for key in ("query_enrolment_rows_s", "query_other_seqs_s", "query_alerts_s"):
        print(f"  query {key[6:-2]:<40} {f[key]:7.2f} s")
    print(f"  fetch, one snapshot (all queries + COPY)      {f['fetch_s']:7.2f} s"
          f"   (COPY of {f['readings']:,} readings, the rest:"
          f" {f['copy_and_rest_s']:.2f} s)")  # fmt: skip
    for g in GROUPINGS:
        print(f"  compute by {g:<14} ({f[f'groups_{g}']:>3} groups)        "
              f"{f[f'compute_{g}_s']:7.2f} s")  # fmt: skip
    verdict = "met" if one_evaluation < GOAL_SECONDS else "NOT met"
    print(f"  one evaluation (fetch + slowest grouping)     {one_evaluation:7.2f} s"
          f"   goal < {GOAL_SECONDS:.0f} s: {verdict}")  # fmt: skip
    print(f"  peak memory after the fetch                   "
          f"{f['peak_rss_fetch_bytes'] / 2**30:7.2f} GiB")  # fmt: skip
    rss = f["peak_rss_bytes"]
    print(f"  peak memory of the evaluating process         {rss / 2**30:7.2f} GiB"
          f"   goal < 2 GiB: {'met' if rss < GOAL_BYTES else 'NOT met'}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/var/tmp/ehl-eval-bench"))  # noqa: S108
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--timescale-url", default=os.environ.get("EHEALTHLAB_BENCH_TIMESCALE_URL"))
    parser.add_argument("--only", choices=("plain", "timescale"))
    parser.add_argument("--remove", action="store_true")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if args.only != "timescale":
        url, info = plain_store(args.root, args.patients, args.days, args.reuse)
        report("plain PostgreSQL", info, measure(url, args.days))
    if args.only != "plain" and args.timescale_url:
        url, info = timescale_store(
            args.root, args.timescale_url, args.patients, args.days, args.reuse
        )
        report("TimescaleDB", info, measure(url, args.days))
    elif args.only != "plain":
        print("\nTimescaleDB: not measured (no --timescale-url)")
    for server in _SERVERS:  # no server outlives the run (a reuse starts it again)
        server.remove() if args.remove else server.stop()
    if args.remove:
        shutil.rmtree(args.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
