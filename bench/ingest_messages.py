"""What bench/ingest.py and bench/ingest_load.py send and how they count it: the pilot's
device type, its readings, their messages, and the SQL that tells a bench's rows apart."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

DEVICE_TYPE = "blood_pressure_monitor"
#: a measurement is three readings sharing `at`; values stay clear of every alert rule
MEASUREMENT = (
    ("bp_systolic", "mm[Hg]", 110, 30),
    ("bp_diastolic", "mm[Hg]", 65, 20),
    ("heart_rate", "/min", 55, 35),
)
#: seconds between two measurements of a device (readings are in the past: see `plan_times`)
STEP_S = 10
TEMPLATE = "ehl_bench_template"
PROBE = "probe:"
#: SQL: not one of the probe messages that check ingest is subscribed
NOT_PROBE = f"NOT starts_with(msg_id, '{PROBE}')"
#: SQL: when the row's transaction committed, in seconds since the epoch
COMMITTED = "extract(epoch FROM pg_xact_commit_timestamp(xmin))"


def one(conn: psycopg.Connection[Any], query: str, *params: object) -> Any:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def reading_items(n: int, count: int, device_index: int, base_epoch: int) -> list[dict[str, Any]]:
    """Readings n .. n+count-1 of a device: measurements of three, STEP_S apart."""
    items = []
    for k in range(n, n + count):
        metric, unit, low, spread = MEASUREMENT[k % 3]
        at = datetime.fromtimestamp(base_epoch + (k // 3) * STEP_S, UTC).isoformat()
        value = low + (k * 7 + device_index) % spread
        items.append({"seq": k, "metric": metric, "value": value, "unit": unit, "at": at})
    return items


def encode_message(msg_id_tail: str, readings: list[dict[str, Any]]) -> bytes:
    """A readings message stamped now: sent_at with microseconds, also at the head of msg_id."""
    sent_us = time.time_ns() // 1000
    sent_at = datetime.fromtimestamp(sent_us / 1e6, UTC).isoformat(timespec="microseconds")
    return orjson.dumps(
        {
            "schema": "ehl.readings/1",
            "msg_id": f"{sent_us}:{msg_id_tail}",
            "sent_at": sent_at,
            "readings": readings,
        }
    )
