"""bench/fhir_api.py's stores: building one (registry, readings by binary COPY from two
processes, indexes afterwards), and where they live (the private cluster of the plain
form, a database on a TimescaleDB server), reused by `--reuse`."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from fhir_api_pilot import (
    DATA_VERSION,
    PROVIDERS,
    START,
    STARTUPS,
    Pilot,
    _copy_days,
    make_pilot,
    readings_per_day,
)

from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, place_for
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

DATABASE = "ehl_fhir_bench"


# -- building the store -----------------------------------------------------------------------


def _organisations(conn: psycopg.Connection[Any]) -> dict[str, list[uuid.UUID]]:
    made: dict[str, list[uuid.UUID]] = {"operator": [], "provider": [], "startup": []}
    for kind, count in (("operator", 1), ("provider", PROVIDERS), ("startup", STARTUPS)):
        for i in range(count):
            name = "CMTo" if kind == "operator" else f"bench {kind} {i + 1}"
            row = conn.execute(
                "INSERT INTO organisations (kind, name) VALUES (%s, %s) RETURNING id", (kind, name)
            ).fetchone()
            assert row is not None
            made[kind].append(row[0])
    return made


def _registry(conn: psycopg.Connection[Any], pilot: Pilot) -> None:
    """Organisations, patients, devices and enrolments, as the gateway would have them."""
    organisations = _organisations(conn)
    municipalities = [
        row[0] for row in conn.execute("SELECT istat_code FROM municipalities ORDER BY 1")
    ]
    rng = np.random.default_rng(11)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO patients (id, organisation_id, identifier_hash, label)"
            " VALUES (%s, %s, %s, 'bench')",
            [
                (patient, organisations["provider"][i % PROVIDERS], rng.bytes(32))
                for i, patient in enumerate(pilot.patient_ids)
            ],
        )

        def owner_of(device_type: str, i: int) -> int:
            """Cuffs from every start-up; oximeters, scales, thermometers from one each."""
            return {"blood_pressure_monitor": i, "pulse_oximeter": 1, "weighing_scale": 2}.get(
                device_type, 0
            ) % STARTUPS

        devices = []
        enrolments = []
        for group_devices in pilot.devices:
            group = group_devices.group
            for i, device_id in enumerate(group_devices.ids):
                owner = organisations["startup"][owner_of(group.device_type, i)]
                devices.append((device_id, owner, group.device_type, f"{group.prefix.upper()}-1"))
                patient = int(group_devices.patients[i])
                if patient >= 0:
                    start = START.date() + timedelta(days=int(group_devices.enrolled_from_day[i]))
                    enrolments.append(
                        (
                            pilot.patient_ids[patient],
                            device_id,
                            municipalities[patient % len(municipalities)],
                            start if start > START.date() else START.date() - timedelta(days=30),
                        )
                    )
        cur.executemany(
            "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
            " VALUES (%s, %s, %s, %s, %s)",
            [(d, o, t, m, d) for d, o, t, m in devices],
        )
        cur.executemany(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
            " VALUES (%s, %s, %s, %s)",
            enrolments,
        )


@dataclass
class IndexPlan:
    """The readings indexes as the migrations made them, to build again after the load."""

    primary_key: str
    indexes: list[tuple[str, str]]


def _drop_indexes(conn: psycopg.Connection[Any]) -> IndexPlan:
    rows = conn.execute(
        "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " WHERE c.conrelid = 'readings'::regclass AND c.contype = 'p'"
    ).fetchall()
    [(pk_name, pk_definition)] = rows
    indexes = [
        (name, definition.replace(" ON ONLY ", " ON "))
        for name, definition in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' AND tablename = 'readings' AND indexname <> %s",
            (pk_name,),
        )
    ]
    conn.execute(f"ALTER TABLE readings DROP CONSTRAINT {pk_name}")
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    return IndexPlan(f"ALTER TABLE readings ADD CONSTRAINT {pk_name} {pk_definition}", indexes)


def _run_statements(url: str, statements: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET max_parallel_maintenance_workers = 0")
        for statement in statements:
            started = time.perf_counter()
            conn.execute(statement)
            print(f"  {time.perf_counter() - started:6.0f} s  {statement[:90]}", flush=True)


def _in_processes(target: Any, argument_lists: Sequence[tuple[Any, ...]]) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(argument_lists)) as pool:
        return pool.starmap(target, argument_lists)


def build_store(url: str, form: str, days: int) -> dict[str, Any]:
    """Migrate the empty database `url` and fill it; returns what it holds."""
    pilot = make_pilot()
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, form)  # type: ignore[arg-type]
        load_municipalities(conn)
        with conn.transaction():
            _registry(conn, pilot)
        plan = _drop_indexes(conn)
        if form == "plain":
            firsts = [START + timedelta(days=d) for d in range(0, days + 31, 28)]
            conn.execute("SELECT ehl_ensure_reading_partitions(%s)", (firsts,))
    expected = readings_per_day(pilot) * days
    print(f"loading {expected:,} readings ({days} days) by binary COPY, 2 processes", flush=True)
    months = sorted({(START + timedelta(days=d)).strftime("%Y%m") for d in range(days)})
    by_worker: list[list[int]] = [[], []]
    for d in range(days):
        month = (START + timedelta(days=d)).strftime("%Y%m")
        by_worker[months.index(month) % 2].append(d)
    written = sum(_in_processes(_copy_days, [(url, by_worker[0]), (url, by_worker[1])]))
    assert written == expected, (written, expected)
    loaded = time.perf_counter()
    print(f"loaded in {loaded - started:.0f} s; building indexes", flush=True)
    statements = [plan.primary_key, *(definition for _, definition in plan.indexes)]
    if form == "plain":  # two sessions, one per core
        _in_processes(_run_statements, [(url, statements[0::2]), (url, statements[1::2])])
    else:  # TimescaleDB builds each chunk's index in the statement: one session
        _run_statements(url, statements)
    with psycopg.connect(url, autocommit=True) as conn:
        if form == "timescale":
            conn.execute("CALL refresh_continuous_aggregate('readings_hourly', NULL, NULL)")
        conn.execute("VACUUM (ANALYZE) readings")
        conn.execute("ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    print(f"indexed and vacuumed in {time.perf_counter() - loaded:.0f} s", flush=True)
    return {
        "version": DATA_VERSION,
        "form": form,
        "days": days,
        "readings": written,
        "bytes": int(size[0]) if size else 0,
        "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started),
    }


# -- where the stores live -----------------------------------------------------------------------


@dataclass
class Store:
    """A built store: its URL, what it holds, and how to stop (and remove) it."""

    url: str
    info: dict[str, Any]
    admin_url: str
    state_file: Path
    server: Any = None  # the private PostgresServer of the plain form

    def stop(self, remove: bool) -> None:
        if remove:
            self.state_file.unlink(missing_ok=True)
            if self.server is not None:
                self.server.remove()
            else:
                with psycopg.connect(self.admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        elif self.server is not None:
            self.server.stop()


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _state(root: Path, form: str) -> Path:
    return root / f"{form}.json"


def plain_store(root: Path, days: int, reuse: bool) -> Store:
    """The private cluster under `root`: reused when asked and fit, else built afresh."""
    state_file = _state(root, "plain")
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    parameters = {
        "shared_buffers": "2GB",
        "effective_cache_size": "8GB",
        "max_wal_size": "4GB",
        "checkpoint_timeout": "30min",
        "max_connections": "60",
        "jit": "off",
    }
    directory = root / "postgres"
    if (
        reuse
        and state is not None
        and state["info"]["version"] == DATA_VERSION
        and state["info"]["days"] == days
    ):
        server = PostgresServer(
            Path(state["directory"]), password=state["password"], parameters=parameters
        )
        start_on_free_port(server)
        print(f"reusing the plain store in {server.directory}", flush=True)
        return Store(server.url(DATABASE), state["info"], server.admin_url, state_file, server)
    if state is not None:
        PostgresServer(Path(state["directory"]), password=state["password"]).remove()
    shutil.rmtree(directory, ignore_errors=True)
    server = PostgresServer(
        place_for(ServiceAccount.for_server("postgres"), directory),
        parameters=parameters,
        database=DATABASE,
    )
    start_on_free_port(server)
    print(f"building the plain store in {server.directory}", flush=True)
    info = build_store(server.url(DATABASE), "plain", days)
    state_file.write_text(
        json.dumps({"directory": str(server.directory), "password": server.password, "info": info})
    )
    return Store(server.url(DATABASE), info, server.admin_url, state_file, server)


def timescale_store(root: Path, admin_url: str, days: int, reuse: bool) -> Store:
    """Database DATABASE on the TimescaleDB server `admin_url`, reused or built."""
    state_file = _state(root, "timescale")
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    url = _with_database(admin_url, DATABASE)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if (
            reuse
            and exists
            and state is not None
            and state["info"]["version"] == DATA_VERSION
            and state["info"]["days"] == days
        ):
            print(f"reusing the TimescaleDB store {DATABASE}", flush=True)
            return Store(url, state["info"], admin_url, state_file)
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    print(f"building the TimescaleDB store {DATABASE}", flush=True)
    info = build_store(url, "timescale", days)
    state_file.write_text(json.dumps({"info": info}))
    return Store(url, info, admin_url, state_file)
