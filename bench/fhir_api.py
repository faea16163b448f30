"""The FHIR API under load, on a store of 50 million readings: a patient's last 1,000
Observations, $lastn, and 20-entry searches per second, beside baselines of the same run.

Usage:
    .venv/bin/python bench/fhir_api.py [--store DIR] [--reuse] [--days N] [--duration S]
        [--timescale-url postgresql://SUPERUSER@HOST:PORT/postgres] [--remove]
        [--only plain|timescale] [--build-only] [--pythonpath DIR] [--profile DIR]

The store (default /var/tmp/ehl-fhir-bench, outside the repository) is a private PostgreSQL
cluster holding a year of a pilot: 2,000 patients of 4 providers, each with a blood-pressure
cuff used 4 times a day (a panel and a pulse per inflation), 1,200 of them also wearing a
pulse oximeter that measures every 30 minutes, 1,000 weighing themselves daily, and 40
thermometers nobody is enrolled with (unassigned readings); every 25th patient was enrolled
two months late (the readings before are unassigned), every 50th cuff's clock runs an hour
behind (clock-corrected readings). 365 days make 51.2 million readings (`--days` scales it).
Readings are written in time order, as ingest would, by binary COPY from two processes, with
the indexes built afterwards. `--reuse` takes the store a previous run left (the run keeps it,
stopped, unless `--remove`). `--timescale-url` builds the same store in the TimescaleDB form
on that server (database `ehl_fhir_bench`, kept for `--reuse` like the other) and measures
both.

Each form is served by one uvicorn worker of the real application (`create_app`), started
in a process of its own on 127.0.0.1 with a private Mosquitto; the load comes from wrk
(Debian's package) in another process, over loopback, with a bounded number of connections:
- latency, one connection (closed loop: each request waits for the previous one): a patient's
  last 1,000 Observations (`_count=1000&_sort=-date`) and `$lastn` (max=1), patients taken in
  turn from 200 of one provider's;
- throughput, 16 connections: the first page of a patient's search (`_count=20`), with the
  default totals, with `_total=none`, and a second page (its cursor carries the total);
- baselines, same run, same load: the same searches answered through fhir.resources R4B
  models built and validated for every row (`/bench/r4b/...`, a route of this script: the
  production query, audit and paging, only the rendering differs), and a fixed 20-entry
  Bundle returned as a dict for FastAPI to encode: by default (`jsonable_encoder`, then
  `json.dumps`), and through a return type (pydantic);
- a ladder, same load: that fixed Bundle as bytes (what server and client manage doing
  nothing else: the ceiling), then behind the token check, then after one `SELECT 1` on the
  API's own pool; the steps between the ladder and a search show where its time goes.
CPU is read from /proc for the API worker, wrk and the whole machine over each measurement:
when wrk uses a fraction of a core while the worker uses all of one, the client is not the
bottleneck. `--pythonpath DIR` puts DIR first on the worker's path and runs uvicorn with
httptools and uvloop from there (`.venv/bin/pip install --target DIR httptools uvloop`:
uvicorn's optional C parts, which the project does not install); `--profile DIR` records the
worker with py-spy (`--gil`) during the runs with many connections.

Figures depend on the machine (2 shared cores here, load generator on the same machine);
compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx2
import numpy as np
import orjson
import psycopg
import uvicorn
from fastapi import APIRouter, Request, Response

from ehealthlab.api.app import create_app
from ehealthlab.api.auth import AsyncContextDep, CachedPrincipalDep
from ehealthlab.fhir.mapping import fast, r4b
from ehealthlab.fhir.mapping.rows import ReadingRecord
from ehealthlab.fhir.outcome import FhirResponse
from ehealthlab.fhir.rest.interactions import search_response
from ehealthlab.fhir.rest.runtime import resources_of
from ehealthlab.gateway import token_registry
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import accepts_connections, free_port, start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, place_for
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_STORE = Path("/var/tmp/ehl-fhir-bench")  # noqa: S108 - outside the repository, on purpose
DATABASE = "ehl_fhir_bench"
#: bump when the generated data change, so --reuse does not take an older store
DATA_VERSION = 1

# -- the pilot ----------------------------------------------------------------------------------

START = datetime(2025, 11, 1, tzinfo=UTC)
PATIENTS = 2_000
PROVIDERS = 4
STARTUPS = 3
OXIMETER_WEARERS = 1_200
SCALE_USERS = 1_000
UNASSIGNED_THERMOMETERS = 40
#: every LATE-th patient was enrolled LATE_DAYS after the start: earlier readings unassigned
LATE, LATE_DAYS = 25, 60
#: every DRIFTING-th cuff's clock runs an hour behind: its readings are clock-corrected
DRIFTING = 50
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MINUTE_US = 60_000_000
_DAY_US = 24 * 60 * _MINUTE_US


@dataclass(frozen=True)
class Group:
    """Devices of one type measuring at the same nominal minutes of every day."""

    device_type: str
    prefix: str
    #: (metric, mean, standard deviation, decimals) of each reading of one measurement
    metrics: tuple[tuple[str, float, float, int], ...]
    minutes: tuple[int, ...]
    #: each device measures this many seconds after the nominal minute, at most
    jitter_s: int


CUFF = Group(
    "blood_pressure_monitor",
    "bpm",
    (("bp_systolic", 132, 14, 0), ("bp_diastolic", 82, 9, 0), ("heart_rate", 72, 9, 0)),
    (7 * 60 + 30, 12 * 60 + 30, 18 * 60 + 30, 22 * 60 + 30),
    1_200,
)
OXIMETER = Group(
    "pulse_oximeter",
    "oxi",
    (("spo2", 96.5, 1.3, 0), ("heart_rate", 74, 10, 0)),
    tuple(range(0, 24 * 60, 30)),
    1_500,
)
SCALE = Group("weighing_scale", "scale", (("body_weight", 78, 0.4, 1),), (7 * 60,), 1_800)
THERMOMETER = Group(
    "thermometer", "temp", (("body_temperature", 36.6, 0.3, 1),), (8 * 60, 20 * 60), 1_800
)


@dataclass
class Devices:
    """One group's devices: ids, owners' patients (index into the patients, -1: nobody)."""

    group: Group
    ids: list[str]
    patients: np.ndarray
    drifting: np.ndarray
    enrolled_from_day: np.ndarray


@dataclass
class Pilot:
    patient_ids: list[uuid.UUID]
    devices: list[Devices]


def make_pilot() -> Pilot:
    """The pilot's patients and devices: the same on every run."""
    rng = np.random.default_rng(20261125)
    patient_ids = [uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(PATIENTS)]
    late = np.array([LATE_DAYS if p % LATE == LATE - 1 else 0 for p in range(PATIENTS)])

    def devices(group: Group, owners: np.ndarray, start: int) -> Devices:
        count = len(owners)
        drifting = np.zeros(count, dtype=bool)
        if group is CUFF:
            drifting = np.arange(count) % DRIFTING == DRIFTING - 1
        enrolled = np.where(owners >= 0, late[np.maximum(owners, 0)], 10**6)
        return Devices(
            group,
            [f"{group.prefix}-{start + i:016x}" for i in range(count)],
            owners,
            drifting,
            enrolled,
        )

    everyone = np.arange(PATIENTS)
    return Pilot(
        patient_ids,
        [
            devices(CUFF, everyone, 0),
            devices(OXIMETER, rng.permutation(PATIENTS)[:OXIMETER_WEARERS], 10_000),
            devices(SCALE, rng.permutation(PATIENTS)[:SCALE_USERS], 20_000),
            devices(THERMOMETER, np.full(UNASSIGNED_THERMOMETERS, -1), 30_000),
        ],
    )


def readings_per_day(pilot: Pilot) -> int:
    return sum(len(d.ids) * len(d.group.minutes) * len(d.group.metrics) for d in pilot.devices)


# -- binary COPY ------------------------------------------------------------------------------

COPY_COLUMNS = (
    "device_id, metric, at, value, measured_at, received_at, seq, msg_id, clock_offset_s,"
    " clock_corrected, reported_unit, patient_id"
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _row_dtype(device_length: int, metric_length: int, attributed: bool) -> np.dtype[Any]:
    """One row of COPY's binary format: a field count, then each field's length and bytes
    (big-endian), with NULL as length -1."""
    fields: list[tuple[str, str]] = [
        ("fields", ">i2"),
        ("l_device", ">i4"),
        ("device", f"S{device_length}"),
        ("l_metric", ">i4"),
        ("metric", f"S{metric_length}"),
        ("l_at", ">i4"),
        ("at", ">i8"),
        ("l_value", ">i4"),
        ("value", ">f8"),
        ("l_measured", ">i4"),
        ("measured", ">i8"),
        ("l_received", ">i4"),
        ("received", ">i8"),
        ("l_seq", ">i4"),
        ("seq", ">i8"),
        ("l_msg", ">i4"),
        ("msg", "S36"),
        ("l_offset", ">i4"),
        ("offset", ">f4"),
        ("l_corrected", ">i4"),
        ("corrected", "u1"),
        ("l_unit", ">i4"),
        ("l_patient", ">i4"),
    ]
    if attributed:
        fields.append(("patient", "S16"))
    return np.dtype(fields)


def _uuid_text(raw: np.ndarray) -> np.ndarray:
    """(n, 16) random bytes as (n,) 36-character UUID texts (msg_id)."""
    digits = np.empty((len(raw), 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 15]
    text = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    for start, stop, target in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        text[:, target : target + stop - start] = digits[:, start:stop]
    return text.view("S36").ravel()


class DayWriter:
    """Binary COPY data of one day of the pilot, in time order (hour by hour)."""

    def __init__(self, pilot: Pilot) -> None:
        self.pilot = pilot
        self.patients = np.frombuffer(b"".join(p.bytes for p in pilot.patient_ids), "S16")
        rng = np.random.default_rng(7)
        self.jitter = [rng.integers(0, d.group.jitter_s, len(d.ids)) for d in pilot.devices]
        self.base = [
            [rng.normal(mean, sd, len(d.ids)) for _, mean, sd, _ in d.group.metrics]
            for d in pilot.devices
        ]
        self.ids = [np.array([i.encode() for i in d.ids]) for d in pilot.devices]

    def day(self, day: int) -> tuple[bytes, int]:
        """The COPY data of day `day` (0 = START) and its number of rows."""
        rng = np.random.default_rng(1_000_003 * DATA_VERSION + day)
        day_us = int((START - _PG_EPOCH).total_seconds()) * 1_000_000 + day * _DAY_US
        chunks: list[bytes] = [_COPY_HEADER]
        rows = 0
        for hour in range(24):
            for g, devices in enumerate(self.pilot.devices):
                group = devices.group
                for k, minute in enumerate(group.minutes):
                    if minute // 60 != hour:
                        continue
                    data, count = self._measurement(
                        rng, g, devices, day=day, day_us=day_us, k=k, minute=minute
                    )
                    chunks.extend(data)
                    rows += count
        chunks.append(_COPY_TRAILER)
        return b"".join(chunks), rows

    def _measurement(
        self,
        rng: np.random.Generator,
        g: int,
        devices: Devices,
        *,
        day: int,
        day_us: int,
        k: int,
        minute: int,
    ) -> tuple[list[bytes], int]:
        """Every device of the group measuring once (one message each) at `minute`."""
        group = devices.group
        count = len(devices.ids)
        true_time = (
            day_us
            + minute * _MINUTE_US
            + self.jitter[g] * 1_000_000
            + rng.integers(0, 120_000_000, count)
        )
        at = np.where(devices.drifting, true_time - 3_600_000_000, true_time)
        received = true_time + rng.integers(2_000_000, 40_000_000, count)
        offset = np.where(devices.drifting, 3600.0, rng.uniform(0.2, 2.0, count))
        msg = _uuid_text(rng.integers(0, 256, (count, 16), dtype=np.uint8))
        seq = day * len(group.minutes) + k
        attributed = (devices.patients >= 0) & (devices.enrolled_from_day <= day)
        out: list[bytes] = []
        for m, (metric, _, sd, decimals) in enumerate(group.metrics):
            values = np.round(self.base[g][m] + rng.normal(0, sd / 3, count), decimals)
            for with_patient in (True, False):
                chosen = attributed if with_patient else ~attributed
                n = int(chosen.sum())
                if n == 0:
                    continue
                ids = self.ids[g][chosen]
                row = np.zeros(n, dtype=_row_dtype(ids.dtype.itemsize, len(metric), with_patient))
                row["fields"] = 12
                row["l_device"], row["device"] = ids.dtype.itemsize, ids
                row["l_metric"], row["metric"] = len(metric), metric.encode()
                row["l_at"], row["at"] = 8, at[chosen]
                row["l_value"], row["value"] = 8, values[chosen]
                row["l_measured"], row["measured"] = 8, true_time[chosen]
                row["l_received"], row["received"] = 8, received[chosen]
                row["l_seq"], row["seq"] = 8, seq
                row["l_msg"], row["msg"] = 36, msg[chosen]
                row["l_offset"], row["offset"] = 4, offset[chosen]
                row["l_corrected"], row["corrected"] = 1, devices.drifting[chosen]
                row["l_unit"] = -1
                if with_patient:
                    row["l_patient"] = 16
                    row["patient"] = self.patients[devices.patients[chosen]]
                else:
                    row["l_patient"] = -1
                out.append(row.tobytes())
        return out, count * len(group.metrics)


def _copy_days(url: str, days: list[int]) -> int:
    """Load these days (a worker process of its own)."""
    writer = DayWriter(make_pilot())
    written = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for day in days:
            data, rows = writer.day(day)
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY readings ({COPY_COLUMNS}) FROM STDIN WITH (FORMAT binary)") as copy,
            ):
                copy.write(data)
            written += rows
    return written


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


# -- the API worker ------------------------------------------------------------------------------


def sample_bundle() -> dict[str, Any]:
    """A 20-entry searchset Bundle of a cuff's panels and pulses, as the API builds it."""
    patient, provider = uuid.UUID(int=1), uuid.UUID(int=2)
    readings = []
    for i in range(10):
        at = START + timedelta(hours=6 * i)
        for metric, value in (("bp_systolic", 128.0), ("bp_diastolic", 81.0), ("heart_rate", 70)):
            readings.append(
                ReadingRecord(
                    "bpm-0000000000000001",
                    "blood_pressure_monitor",
                    metric,
                    at,
                    float(value),
                    at,
                    at + timedelta(seconds=9),
                    False,
                    patient,
                    provider,
                )
            )
    base = "http://127.0.0.1/fhir"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": f"{base}/Observation?patient={patient}&_count=20"}],
        "entry": [
            {"fullUrl": f"{base}/Observation/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in fast.observations_json(readings)
        ],
    }


def baseline_router() -> APIRouter:
    """This benchmark's routes: a fixed Bundle with more and more of a search's work around
    it (from the server's ceiling to one query), and the search through R4B models."""
    router = APIRouter(prefix="/bench")
    bundle = sample_bundle()
    encoded = orjson.dumps(bundle)

    @router.get("/bytes")
    async def fixed_bytes() -> Response:
        return FhirResponse(encoded)

    @router.get("/default", response_model=None)
    async def default_encoding() -> Any:
        return bundle  # no type to go by: FastAPI's jsonable_encoder, then JSONResponse

    @router.get("/typed")
    async def typed_encoding() -> dict[str, Any]:
        return bundle  # a return type: pydantic writes the JSON (FastAPI's fast path)

    @router.get("/token")
    async def token_checked(caller: CachedPrincipalDep) -> Response:
        return FhirResponse(encoded)

    @router.get("/select")
    async def one_select(caller: CachedPrincipalDep, request: Request) -> Response:
        async with resources_of(request).pool.connection() as conn:
            await (await conn.execute("SELECT 1")).fetchall()
        return FhirResponse(encoded)

    @router.get("/r4b/Observation")
    async def search_with_models(
        request: Request, caller: CachedPrincipalDep, context: AsyncContextDep
    ) -> Response:
        """The production search, each Observation built as a validated R4B model."""
        items = request.query_params.multi_items()
        return await search_response(
            items, request, caller, context, "Observation", observation_json=_r4b_observation
        )

    return router


def _r4b_observation(source: Any) -> dict[str, Any]:
    """An Observation as a validated fhir.resources R4B model, then its JSON dict."""
    result: dict[str, Any] = r4b.observation(source).model_dump(mode="json")
    return result


def serve(port: int, http: str, loop: str) -> None:
    """One uvicorn worker of the real application, with this benchmark's routes added (no
    access log: `ehealthlab api` writes one, which costs tens of microseconds a request)."""
    app = create_app(Settings())
    app.include_router(baseline_router())
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http=http,
        loop=loop,
    )


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    url: str
    server: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_worker(
    store: Store, broker: MosquittoBroker, scratch: Path, pythonpath: str | None
) -> Worker:
    port = free_port()
    paths = [str(REPOSITORY)] + ([pythonpath] if pythonpath else [])
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "EHEALTHLAB_DATABASE_URL": store.url,
        "EHEALTHLAB_MQTT_HOST": broker.host,
        "EHEALTHLAB_MQTT_PORT": str(broker.port),
        "EHEALTHLAB_MQTT_USERNAME": broker.admin_username,
        "EHEALTHLAB_MQTT_PASSWORD": broker.admin_password,
        "EHEALTHLAB_PATIENT_KEY": "fhir api bench patient key, long enough",
        "EHEALTHLAB_STATE_DIR": str(scratch / "state"),
    }
    http, loop = ("httptools", "uvloop") if pythonpath else ("h11", "asyncio")
    process = subprocess.Popen(
        [sys.executable, __file__, "serve", "--port", str(port), "--http", http, "--loop", loop],
        env=environment,
    )
    deadline = time.monotonic() + 60
    while not accepts_connections(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the API worker did not start")
        time.sleep(0.2)
    return Worker(process, f"http://127.0.0.1:{port}", f"uvicorn ({http}, {loop})")


# -- load ----------------------------------------------------------------------------------------

#: wrk's script: the paths in turn (each thread from its own place), one token, and the
#: figures printed as one JSON line at the end
_LUA = """
local paths = {%(paths)s}
local token = "%(token)s"
local threads = {}
setup = function(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
init = function(args)
  position = id * 7919
end
request = function()
  position = position + 1
  return wrk.format("GET", paths[(position %% #paths) + 1],
                    {["Authorization"] = "Bearer " .. token})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests": %%d, "duration_us": %%d, "socket_errors": %%d, "bad_status": %%d,'
    .. ' "p50": %%d, "p95": %%d, "p99": %%d, "max": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(values), values[3] + values[4]  # all, idle + iowait


def machine_busy(seconds: float = 3.0) -> float:
    """% of all cores busy meanwhile (others' work: the machine is shared)."""
    before = _machine_ticks()
    time.sleep(seconds)
    after = _machine_ticks()
    total, idle = after[0] - before[0], after[1] - before[1]
    return 100 * (total - idle) / total if total else 0.0


@dataclass
class Result:
    label: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    worker_cpu: float  # % of one core
    client_cpu: float  # % of one core
    machine_busy: float  # % of all cores
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(
    worker: Worker,
    paths: Sequence[str],
    token: str,
    *,
    connections: int,
    seconds: float,
    label: str,
    profile: Path | None = None,
) -> Result:
    """`paths` requested in turn by wrk (one thread) on `connections` connections."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA % {"paths": ", ".join(json.dumps(p) for p in paths), "token": token})
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        "--timeout",
        "10s",
        "-s",
        script.name,
        worker.url,
    ]
    clock = os.sysconf("SC_CLK_TCK")
    pid = worker.process.pid
    worker_before, machine_before = _cpu_ticks(pid), _machine_ticks()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    spy = None
    if profile is not None:
        name = "".join(c if c.isalnum() else "_" for c in label)
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, int(seconds) - 2)),
                "-r",
                "200",
                "--gil",
                "-f",
                "raw",
                "-o",
                str(profile / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    client_ticks = 0
    while process.poll() is None:  # wrk's own CPU, read while it still exists
        try:
            client_ticks = _cpu_ticks(process.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    out, _ = process.communicate()
    if spy is not None:
        spy.wait()
    worker_after, machine_after = _cpu_ticks(pid), _machine_ticks()
    Path(script.name).unlink()
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    summary = json.loads(line.removeprefix("RESULT "))
    elapsed = summary["duration_us"] / 1e6
    total = machine_after[0] - machine_before[0]
    idle = machine_after[1] - machine_before[1]
    result = Result(
        label,
        connections,
        summary["requests"],
        elapsed,
        summary["p50"] / 1000,
        summary["p95"] / 1000,
        summary["p99"] / 1000,
        100 * (worker_after - worker_before) / clock / elapsed,
        100 * client_ticks / clock / elapsed,
        100 * (total - idle) / total if total else 0.0,
    )
    if summary["socket_errors"] or summary["bad_status"]:
        result.notes.append(
            f"{summary['socket_errors']} socket errors, {summary['bad_status']} not 2xx"
        )
    return result


# -- a run -----------------------------------------------------------------------------------------


@dataclass
class Scene:
    """What the requests need: a provider's token, patients to ask about, second pages."""

    token: str
    patients: list[str]
    second_pages: list[str]
    #: first pages asked for while choosing the patients
    asked: int


def prepare(store: Store, worker: Worker, patients: int = 200) -> Scene:
    """A token of the first provider and `patients` of its patients with two pages or more."""
    with psycopg.connect(store.url, autocommit=True) as conn:
        provider = conn.execute(
            "SELECT id FROM organisations WHERE kind = 'provider' ORDER BY name LIMIT 1"
        ).fetchone()
        assert provider is not None
        _, token = token_registry.create_token(conn, provider[0], "member", "fhir api bench")
        candidates = [
            str(row[0])
            for row in conn.execute(
                "SELECT id FROM patients WHERE organisation_id = %s ORDER BY id LIMIT %s",
                (provider[0], patients + patients // 4),
            )
        ]
    chosen, second_pages, asked = [], [], 0
    with httpx2.Client(base_url=worker.url, timeout=60) as http:
        for patient in candidates:
            asked += 1
            answer = http.get(
                "/fhir/Observation",
                params={"patient": patient, "_count": "20"},
                headers={"Authorization": f"Bearer {token}"},
            )
            answer.raise_for_status()
            links = {link["relation"]: link["url"] for link in answer.json()["link"]}
            if "next" not in links:
                continue  # enrolled late: nothing of theirs yet in a short store
            parts = urlsplit(links["next"])
            second_pages.append(f"{parts.path}?{parts.query}")
            chosen.append(patient)
            if len(chosen) == patients:
                break
    return Scene(token, chosen, second_pages, asked)


def _searches(patients: Sequence[str], prefix: str = "/fhir", **extra: str) -> list[str]:
    return [f"{prefix}/Observation?{urlencode({'patient': p, **extra})}" for p in patients]


#: connections for throughput: enough to keep one worker busy, few enough to stay bounded
THROUGHPUT_CONNECTIONS = 16


def _audit_rows(store: Store) -> int:
    with psycopg.connect(store.url) as conn:
        row = conn.execute("SELECT count(*) FROM fhir_audit_events").fetchone()
    return int(row[0]) if row else 0


@dataclass
class Audited:
    """Requests answered that read patient data, and the audit rows written meanwhile."""

    requests: int = 0
    in_flight: int = 0  # requests wrk may have left unanswered at the end of its runs
    rows: int = 0


def measure(
    store: Store, worker: Worker, seconds: float, profile: Path | None
) -> tuple[list[Result], Audited]:
    rows_before = _audit_rows(store)
    scene = prepare(store, worker)
    warm_up = max(3.0, seconds / 5)
    audited = Audited()

    def run(label: str, paths: list[str], connections: int, length: float = seconds) -> Result:
        warm = wrk(
            worker, paths, scene.token, connections=connections, seconds=warm_up, label="warm-up"
        )
        result = wrk(
            worker,
            paths,
            scene.token,
            connections=connections,
            seconds=length,
            label=label,
            profile=profile if connections > 1 else None,
        )
        print(
            f"  {label}: {result.rate:,.0f} req/s, p50 {result.p50_ms:.1f} ms,"
            f" p95 {result.p95_ms:.1f} ms, worker {result.worker_cpu:.0f} %",
            flush=True,
        )
        if paths[0].startswith(("/fhir/", "/bench/r4b/")):  # patient data: audited
            audited.requests += warm.requests + result.requests
            audited.in_flight += 2 * connections
        return result

    last = {"_count": "1000", "_sort": "-date"}
    twenty = {"_count": "20"}
    lastn = [f"/fhir/Observation/$lastn?{urlencode({'patient': p})}" for p in scene.patients]
    many = THROUGHPUT_CONNECTIONS
    short = max(5.0, seconds / 2)  # the models are slow: fewer requests suffice
    results = [
        run("last 1,000 Observations", _searches(scene.patients, **last), 1),
        run(
            "baseline: last 1,000, R4B models",
            _searches(scene.patients, "/bench/r4b", **last),
            1,
            short,
        ),
        run("$lastn (max=1)", lastn, 1),
        run("search, first page (20)", _searches(scene.patients, **twenty), many),
        run(
            "search, first page, _total=none",
            _searches(scene.patients, **twenty, _total="none"),
            many,
        ),
        run("search, second page (20)", scene.second_pages, many),
        run(
            "baseline: first page, R4B models",
            _searches(scene.patients, "/bench/r4b", **twenty),
            many,
            short,
        ),
        run("ladder: fixed Bundle bytes (ceiling)", ["/bench/bytes"], many),
        run("ladder: + token check", ["/bench/token"], many),
        run("ladder: + one SELECT 1", ["/bench/select"], many),
        run("baseline: FastAPI default JSON", ["/bench/default"], many),
        run("baseline: FastAPI typed return", ["/bench/typed"], many),
    ]
    audited.requests += scene.asked
    audited.rows = _audit_rows(store) - rows_before
    return results, audited


def report(
    form: str, store: Store, worker: Worker, measured: tuple[list[Result], Audited], idle: float
) -> None:
    results, audited = measured
    info = store.info
    print(
        f"\n{form}: {info['readings']:,} readings ({info['bytes'] / 2**30:.1f} GiB), built"
        f" {info['built']}; {worker.server}, one worker; machine {idle:.0f} % busy before"
    )
    print(
        f"| {'measurement':<38} | conn | {'req/s':>7} | p50 ms | p95 ms | p99 ms"
        " | worker % | wrk % | machine % |"
    )
    print(
        f"|{'-' * 40}|-----:|--------:|-------:|-------:|-------:|---------:|------:|----------:|"
    )
    for r in results:
        notes = ("  " + "; ".join(r.notes)) if r.notes else ""
        print(
            f"| {r.label:<38} | {r.connections:>4} | {r.rate:>7,.0f} | {r.p50_ms:>6.1f}"
            f" | {r.p95_ms:>6.1f} | {r.p99_ms:>6.1f} | {r.worker_cpu:>8.0f} | {r.client_cpu:>5.0f}"
            f" | {r.machine_busy:>9.0f} |{notes}"
        )
    by = {r.label: r for r in results}
    last, lastn = by["last 1,000 Observations"], by["$lastn (max=1)"]
    first, models = by["search, first page (20)"], by["baseline: first page, R4B models"]
    last_models = by["baseline: last 1,000, R4B models"]
    ceiling = by["ladder: fixed Bundle bytes (ceiling)"]
    print(
        f"p95 under 50 ms: last 1,000 {last.p95_ms:.1f} ms"
        f" ({'met' if last.p95_ms < 50 else 'NOT met'}), $lastn {lastn.p95_ms:.1f} ms"
        f" ({'met' if lastn.p95_ms < 50 else 'NOT met'}); 5,000 req/s for 20 entries:"
        f" {first.rate:,.0f} ({'met' if first.rate >= 5000 else 'NOT met'});"
        f" fast path / R4B models: {first.rate / models.rate:.1f}x on 20 entries,"
        f" {last_models.p50_ms / last.p50_ms:.1f}x on 1,000 (p50);"
        f" first page / ceiling: {100 * first.rate / ceiling.rate:.0f} %"
    )
    print(
        f"audit trail: {audited.rows:,} events written for {audited.requests:,} requests of"
        f" patient data answered (up to {audited.in_flight} more may have been answered after"
        " wrk stopped counting)"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return (
        f"{os.cpu_count()} CPU ({model}), {memory:.0f} GiB, Python {platform.python_version()},"
        f" commit {_commit()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def measure_each(
    stores: list[tuple[str, Store]], broker: MosquittoBroker, scratch: Path, args: Any
) -> None:
    """Each store behind a worker of its own; the reports after all measurements."""
    measured = []
    for form, store in stores:
        print(f"\nmeasuring the {form} form ({store.info['readings']:,} readings)", flush=True)
        api = start_worker(store, broker, scratch, args.pythonpath)
        try:
            busy = machine_busy()
            results = measure(store, api, args.duration, args.profile)
            measured.append((form, store, api, results, busy))
        finally:
            api.stop()
    print("\n" + _machine())
    for form, store, api, results, busy in measured:
        report(form, store, api, results, busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    worker = commands.add_parser("serve", help="(internal) one API worker")
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--http", default="h11")
    worker.add_argument("--loop", default="asyncio")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="where stores live")
    parser.add_argument("--reuse", action="store_true", help="take the store a run left")
    parser.add_argument("--days", type=int, default=365, help="days of readings (365: 51 M)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--timescale-url", help="superuser URL of a TimescaleDB server")
    parser.add_argument("--only", choices=("plain", "timescale"), help="one form only")
    parser.add_argument("--build-only", action="store_true", help="build, measure nothing")
    parser.add_argument("--remove", action="store_true", help="delete the stores at the end")
    parser.add_argument("--pythonpath", help="a directory put first on the worker's path")
    parser.add_argument("--profile", type=Path, help="py-spy the worker into this directory")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.http, args.loop)
        return 0
    if shutil.which("wrk") is None:
        parser.error("wrk is missing: apt-get install wrk")
    args.store.mkdir(parents=True, exist_ok=True)
    args.store.chmod(0o755)  # the postgres account reaches its directory inside
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(_machine(), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="ehl-bench-fhir-api-"))
    broker = MosquittoBroker(place_for(ServiceAccount.for_server("mosquitto"), scratch / "mqtt"))
    stores: list[tuple[str, Store]] = []
    try:
        start_on_free_port(broker)
        if args.only != "timescale":
            stores.append(("plain", plain_store(args.store, args.days, args.reuse)))
        if args.timescale_url and args.only != "plain":
            built = timescale_store(args.store, args.timescale_url, args.days, args.reuse)
            stores.append(("timescale", built))
        if not args.build_only:
            measure_each(stores, broker, scratch, args)
    finally:
        broker.remove()
        for form, store in stores:
            store.stop(args.remove)
            where = "removed" if args.remove else "kept (--reuse takes it, --remove deletes it)"
            location = store.server.directory if store.server is not None else DATABASE
            print(f"{form} store {location}: {where}")
        shutil.rmtree(scratch, ignore_errors=True)
        if args.remove and not any(args.store.iterdir()):
            args.store.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
