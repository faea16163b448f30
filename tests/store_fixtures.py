"""What the tests of the store share: readings made by hand, a device registered and a
patient enrolled with it, on a connection to a migrated store; and libpq's trace of what a
connection exchanged, to count its waits for the server."""

from __future__ import annotations

import itertools
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg.pq import Trace

from ehealthlab.store.readings import ReadingRow

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def reading(
    device: str = "cuff-0001",
    metric: str = "bp_systolic",
    *,
    at: datetime = T0,
    value: float = 142.0,
    seq: int = 1,
    offset: float = 0.5,
    corrected: bool = False,
    msg: str = "m-1",
) -> ReadingRow:
    measured = at + timedelta(seconds=offset) if corrected else at
    return ReadingRow(
        device_id=device,
        metric=metric,
        at=at,
        value=value,
        measured_at=measured,
        received_at=at + timedelta(seconds=3),
        seq=seq,
        msg_id=msg,
        clock_offset_s=offset,
        clock_corrected=corrected,
        reported_unit=None,
    )


def register_device(conn: psycopg.Connection, device: str = "cuff-0001") -> None:
    org = conn.execute(
        "INSERT INTO organisations (kind, name) VALUES ('startup', %s) RETURNING id",
        (f"startup of {device}",),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
        " VALUES (%s, %s, 'blood_pressure_monitor', 'BP-1', %s)",
        (device, org, device),
    )


def enrol(conn: psycopg.Connection, device: str, start: date, end: date | None = None):
    provider = conn.execute(
        "INSERT INTO organisations (kind, name) VALUES ('provider', %s) RETURNING id",
        (f"ASL {random.random()}",),
    ).fetchone()[0]
    patient = conn.execute(
        "INSERT INTO patients (organisation_id, identifier_hash, label)"
        " VALUES (%s, %s, 'patient A') RETURNING id",
        (provider, random.randbytes(32)),
    ).fetchone()[0]
    enrolment = conn.execute(
        "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, end_date,"
        " care_plan) VALUES (%s, %s, '001003', %s, %s, '{\"bp_systolic\": 2}') RETURNING id",
        (patient, device, start, end),
    ).fetchone()[0]
    return patient, enrolment


@contextmanager
def traced(conn: psycopg.Connection) -> Iterator[list[str]]:
    """The protocol messages exchanged in the block, in order: "F ..." sent, "B ..." read."""
    lines: list[str] = []
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        try:
            yield lines
        finally:
            conn.pgconn.untrace()
            trace.seek(0)
            lines.extend(" ".join(line.split()) for line in trace)


def waits(lines: list[str]) -> int:
    """How many times the client stopped sending to read the server's answers."""
    return sum(a.startswith("F") and b.startswith("B") for a, b in itertools.pairwise(lines))
