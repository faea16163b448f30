"""Read what an evaluation needs from the store, in one snapshot, into a Dataset.

One `REPEATABLE READ READ ONLY` transaction (indicators.md, "One snapshot": ingest writing
meanwhile never makes one indicator disagree with another). Aggregation happens in SQL where
it shrinks the data (seqs, duplicates and rejects per enrolment and day; alerts), and the
per-reading arrays the percentiles and plans need come through a binary COPY parsed with a
numpy record type, a few megabytes at a time, so twenty million readings never become
Python objects.

Every row is attributed as ingest attributes readings: to the enrolment of its device on
the pilot day of its (clock-corrected) time of measurement. Only enrolments of the asked
population are read: a patient of a simulated provider, or a simulated device, is simulated.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import IsolationLevel

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.pilot_time import day_start
from ehealthlab.evaluation.dataset import (
    Alerts,
    Dataset,
    Enrolments,
    MiniPilotScope,
    Municipality,
    Period,
    Readings,
    SusResponses,
    day_counts_of,
)
from ehealthlab.store.binary_copy import POSTGRES_EPOCH, copy_records
from ehealthlab.store.db import Connection

# the enrolments of the population that touch the period, numbered in a stable order; every
# query of the snapshot joins the same numbering
_ENROLMENTS = """
    SELECT (row_number() OVER (ORDER BY e.id) - 1)::int4 AS idx, e.id, e.patient_id,
           e.device_id, e.municipality, e.start_date, e.end_date, e.care_plan,
           greatest(e.start_date, %(first)s::date) AS first_date,
           least(coalesce(e.end_date, %(last)s::date), %(last)s::date) AS last_date,
           -- the same days as instants (local midnights, as ehl_pilot_day counts them), so
           -- that millions of readings are attributed by comparing timestamps
           greatest(e.start_date, %(first)s::date)::timestamp AT TIME ZONE 'Europe/Rome'
               AS from_ts,
           (least(coalesce(e.end_date, %(last)s::date), %(last)s::date) + 1)::timestamp
               AT TIME ZONE 'Europe/Rome' AS until_ts
    FROM enrolments e
    JOIN patients p ON p.id = e.patient_id
    JOIN organisations provider ON provider.id = p.organisation_id
    JOIN devices d ON d.device_id = e.device_id
    JOIN organisations startup ON startup.id = d.organisation_id
    WHERE (provider.simulated OR startup.simulated OR d.simulated) = %(simulated)s
      AND e.start_date <= %(last)s AND (e.end_date IS NULL OR e.end_date >= %(first)s)
"""

_ENROLMENT_ROWS = f"""
    WITH e AS ({_ENROLMENTS})
    SELECT e.idx, e.patient_id, e.device_id, e.municipality, e.start_date, e.care_plan,
           e.first_date - %(first)s::date, e.last_date - %(first)s::date,
           d.device_type, d.organisation_id::text, o.name
    FROM e JOIN devices d ON d.device_id = e.device_id
    JOIN organisations o ON o.id = d.organisation_id
    ORDER BY e.idx
"""  # noqa: S608 - composed of constants; values are bound parameters

_ATTRIBUTED = """
    JOIN e ON e.device_id = {alias}.device_id
          AND {alias}.measured_at >= e.from_ts AND {alias}.measured_at < e.until_ts
"""

_READINGS = f"""
    COPY (
        WITH e AS ({_ENROLMENTS})
        SELECT e.idx, (m.k - 1)::int2, r.measured_at, r.received_at, r.clock_corrected, r.seq
        FROM readings r {_ATTRIBUTED.format(alias="r")}
        JOIN unnest(%(metrics)s::text[]) WITH ORDINALITY AS m (metric, k) ON m.metric = r.metric
        WHERE r.measured_at >= %(start)s AND r.measured_at < %(end)s
    ) TO STDOUT (FORMAT BINARY)
"""  # noqa: S608 - composed of constants; values are bound parameters

# the seqs of duplicates and rejected readings (the accepted ones come with the COPY): few
_OTHER_SEQS = f"""
    WITH e AS ({_ENROLMENTS}),
    seen AS (
        SELECT device_id, measured_at, seq, 1 AS kind FROM duplicate_readings
        WHERE measured_at >= %(start)s AND measured_at < %(end)s
        UNION ALL
        SELECT device_id, measured_at, coalesce(seq, -1), 2 FROM rejected_readings
        WHERE item_index IS NOT NULL AND measured_at >= %(start)s AND measured_at < %(end)s
    )
    SELECT e.idx, ehl_pilot_day(s.measured_at) - %(first)s::date, s.seq, s.kind
    FROM seen s {_ATTRIBUTED.format(alias="s")}
"""  # noqa: S608 - composed of constants; values are bound parameters

_ALERTS = f"""
    WITH e AS ({_ENROLMENTS})
    SELECT e.idx, a.day - %(first)s::date,
           extract(epoch FROM a.acknowledged_at - a.raised_at)::float8 / 3600
    FROM alerts a
    JOIN e ON e.device_id = a.device_id AND a.day BETWEEN e.first_date AND e.last_date
    WHERE a.day >= %(first)s AND a.day <= %(last)s
"""  # noqa: S608 - composed of constants; values are bound parameters

# messages refused whole: no readable time of measurement, so counted per start-up by receipt
_UNPARSABLE = """
    SELECT d.organisation_id::text, count(*)
    FROM rejected_readings rr
    JOIN devices d ON d.device_id = rr.device_id
    JOIN organisations o ON o.id = d.organisation_id
    WHERE rr.item_index IS NULL AND rr.reason <> 'platform_error'
      AND rr.received_at >= %(start)s AND rr.received_at < %(end)s
      AND (o.simulated OR d.simulated) = %(simulated)s
    GROUP BY 1
"""

_SUS = """
    SELECT patient_id, municipality, answered_on - %(first)s::date, score
    FROM sus_responses
    WHERE answered_on >= %(first)s AND answered_on <= %(last)s AND simulated = %(simulated)s
"""

_MINI_PILOTS = """
    SELECT mp.id::text, mp.name, mp.start_date - %(first)s::date, mp.end_date - %(first)s::date,
           ARRAY(SELECT organisation_id::text FROM mini_pilot_startups s
                 WHERE s.mini_pilot_id = mp.id),
           ARRAY(SELECT istat_code FROM mini_pilot_municipalities m
                 WHERE m.mini_pilot_id = mp.id)
    FROM mini_pilots mp ORDER BY mp.name
"""

_MUNICIPALITIES = """
    SELECT istat_code, name, population, snai_class FROM municipalities ORDER BY istat_code
"""

# one reading of the binary COPY: per field its length, then its big-endian value (a
# timestamptz is microseconds since 2000-01-01 UTC); days and latencies are worked out in
# numpy, not per row in SQL
_READING_RECORD = np.dtype(
    [("fields", ">i2"),
     ("l1", ">i4"), ("enrolment", ">i4"), ("l2", ">i4"), ("metric", ">i2"),
     ("l3", ">i4"), ("measured_us", ">i8"), ("l4", ">i4"), ("received_us", ">i8"),
     ("l5", ">i4"), ("clock_corrected", "?"), ("l6", ">i4"), ("seq", ">i8")]
)  # fmt: skip
_FIELDS = 6


def fetch_dataset(conn: Connection, period: Period, population: str) -> Dataset:
    """The Dataset of one population over one period, read in one snapshot."""
    metrics = tuple(METRICS)
    params = {
        "first": period.start,
        "last": period.end - timedelta(days=1),
        "start": day_start(period.start),
        "end": day_start(period.end),
        "simulated": population == "simulated",
        "metrics": list(metrics),
    }
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            return _read(conn, period, population, metrics, params)
    finally:
        conn.read_only = False
        conn.isolation_level = None


def _read(
    conn: Connection,
    period: Period,
    population: str,
    metrics: tuple[str, ...],
    params: dict[str, Any],
) -> Dataset:
    municipalities = tuple(
        Municipality(code, name, population_, snai)
        for code, name, population_, snai in conn.execute(_MUNICIPALITIES).fetchall()
    )
    municipality_index = {m.istat_code: i for i, m in enumerate(municipalities)}
    rows = conn.execute(_ENROLMENT_ROWS, params).fetchall()
    patients = _Index()
    devices = _Index()
    device_type: list[str] = []
    device_startup: list[str] = []
    startup_names: dict[str, str] = {}
    plans = np.zeros((len(rows), len(metrics)), dtype=np.int64)
    metric_index = {m: i for i, m in enumerate(metrics)}
    for row, (_, patient, device, _, _, plan, _, _, kind, startup, name) in enumerate(rows):
        patients.of(patient)
        if devices.of(device) == len(device_type):
            device_type.append(kind)
            device_startup.append(startup)
        startup_names[startup] = name
        for metric, per_day in _plan(plan).items():
            if metric in metric_index:
                plans[row, metric_index[metric]] = per_day
    enrolments = Enrolments(
        patient=np.array([patients.of(r[1]) for r in rows], dtype=np.int64),
        device=np.array([devices.of(r[2]) for r in rows], dtype=np.int64),
        municipality=np.array([municipality_index[r[3]] for r in rows], dtype=np.int64),
        first_day=np.array([r[6] for r in rows], dtype=np.int64),
        last_day=np.array([r[7] for r in rows], dtype=np.int64),
        start_date=tuple(r[4] for r in rows),
        plan=plans,
    )
    sus_rows = conn.execute(_SUS, params).fetchall()
    sus = SusResponses(
        patient=np.array([patients.of(p) if p is not None else -1 for p, *_ in sus_rows],
                         dtype=np.int64),
        municipality=np.array([municipality_index[m] for _, m, _, _ in sus_rows], dtype=np.int64),
        day=np.array([d for _, _, d, _ in sus_rows], dtype=np.int64),
        score=np.array([s for *_, s in sus_rows], dtype=np.float64),
    )  # fmt: skip
    alerts = conn.execute(_ALERTS, params).fetchall()
    readings, seqs = _readings(conn, params, period)
    others = conn.execute(_OTHER_SEQS, params).fetchall()
    other = list(zip(*others, strict=True)) if others else [()] * 4
    # in the readings' own narrow types: int64 would double twenty million rows
    day_counts = day_counts_of(
        np.concatenate((readings.enrolment, np.array(other[0], dtype=np.int32))),
        np.concatenate((readings.day, np.array(other[1], dtype=np.int16))),
        np.concatenate((seqs, np.array(other[2], dtype=np.int64))),
        np.concatenate((np.zeros(seqs.size, np.int8), np.array(other[3], dtype=np.int8))),
        enrolments=len(rows),
        days=period.days,
    )
    del seqs
    return Dataset(
        period=period,
        population=population,
        metrics=metrics,
        municipalities=municipalities,
        device_startup=tuple(device_startup),
        device_type=tuple(device_type),
        patients=len(patients),
        enrolments=enrolments,
        readings=readings,
        day_counts=day_counts,
        alerts=Alerts(
            enrolment=np.array([a[0] for a in alerts], dtype=np.int64),
            day=np.array([a[1] for a in alerts], dtype=np.int64),
            ack_hours=np.array([np.nan if a[2] is None else a[2] for a in alerts], np.float64),
        ),
        sus=sus,
        mini_pilots=_mini_pilots(conn, params),
        startup_names=startup_names,
        unparsable_messages=dict(conn.execute(_UNPARSABLE, params).fetchall()),
    )


class _Index:
    """Numbers things in the order first seen."""

    def __init__(self) -> None:
        self._numbers: dict[Any, int] = {}

    def of(self, thing: Any) -> int:
        return self._numbers.setdefault(thing, len(self._numbers))

    def __len__(self) -> int:
        return len(self._numbers)


def _plan(care_plan: Any) -> dict[str, int]:
    plan = json.loads(care_plan) if isinstance(care_plan, str | bytes) else care_plan
    return {str(k): int(v) for k, v in dict(plan).items() if isinstance(v, int | float)}


#: the types of the readings' columns, as the Dataset keeps them: the narrowest that holds
#: each, 24 bytes a reading
_EMPTY = {"enrolment": np.int32, "metric": np.int8, "day": np.int16, "latency_s": np.float64,
          "clock_corrected": np.bool_, "seq": np.int64}  # fmt: skip


def _microseconds(moment: datetime) -> int:
    """A moment as PostgreSQL's binary timestamptz counts it."""
    return (moment - POSTGRES_EPOCH) // timedelta(microseconds=1)


def _readings(
    conn: Connection, params: dict[str, Any], period: Period
) -> tuple[Readings, npt.NDArray[np.int64]]:
    """The accepted readings, and their seqs (for the day counts only). Each chunk of the
    COPY is narrowed into its columns at once, so the wide records never pile up; the pilot
    day of each reading is found among the period's local midnights (23- and 25-hour days
    included), its latency from the two instants."""
    midnights = np.array(
        [_microseconds(day_start(period.start + timedelta(days=d)))
         for d in range(period.days + 1)], dtype=np.int64,
    )  # fmt: skip
    columns: dict[str, list[npt.NDArray[Any]]] = {
        name: [] for name in ("enrolment", "metric", "day", "latency_s", "clock_corrected", "seq")
    }
    with conn.cursor() as cursor, cursor.copy(_READINGS, params) as copy:
        for records in copy_records(copy, _READING_RECORD, _FIELDS):
            measured = records["measured_us"]
            columns["enrolment"].append(records["enrolment"].astype(np.int32))
            columns["metric"].append(records["metric"].astype(np.int8))
            columns["day"].append(
                (np.searchsorted(midnights, measured, side="right") - 1).astype(np.int16)
            )
            columns["latency_s"].append((records["received_us"] - measured) / 1e6)
            columns["clock_corrected"].append(records["clock_corrected"].astype(np.bool_))
            columns["seq"].append(records["seq"].astype(np.int64))
    whole = {}  # column by column, each one's parts let go at once
    for name, dtype in _EMPTY.items():
        parts = columns.pop(name)
        whole[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        del parts
    readings = Readings(
        enrolment=whole["enrolment"],
        metric=whole["metric"],
        day=whole["day"],
        latency_s=whole["latency_s"],
        clock_corrected=whole["clock_corrected"],
    )
    return readings, whole["seq"]


def _mini_pilots(conn: Connection, params: dict[str, Any]) -> tuple[MiniPilotScope, ...]:
    return tuple(
        MiniPilotScope(key, name, frozenset(startups), frozenset(codes), first, last)
        for key, name, first, last, startups, codes in conn.execute(_MINI_PILOTS, params)
    )
