"""Read what an alert-threshold replay needs from the store, in one snapshot.

One `REPEATABLE READ READ ONLY` transaction: the population's patients (numbered by id; a
patient is simulated iff their provider organisation is, migrations 0012/0014), their
enrolments touching the period, their accepted readings of the rules' metrics (the period,
and the longest weight-gain window before it for weights) and the alerts ingest stored for
the period. Readings come through a binary COPY parsed with a numpy record type a few
megabytes at a time, so twenty million readings never become Python objects.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import IsolationLevel

from ehealthlab.contract.pilot_time import day_start
from ehealthlab.evaluation.replay import (
    MetricReadings,
    Period,
    ReplayData,
    StoredAlerts,
    enrolled_days,
)
from ehealthlab.evaluation.replay_plan import ReplayPlan
from ehealthlab.store.binary_copy import POSTGRES_EPOCH, copy_records
from ehealthlab.store.db import Connection

# the population's patients, numbered from 0 in id order; every query of the snapshot joins
# the same numbering
_POPULATION = """
    SELECT p.id, (row_number() OVER (ORDER BY p.id) - 1)::int4 AS idx
    FROM patients p JOIN organisations provider ON provider.id = p.organisation_id
    WHERE provider.simulated = %(simulated)s
"""

_PATIENTS = f"SELECT count(*) FROM ({_POPULATION}) AS pop"  # noqa: S608 - constants only

_ENROLMENTS = f"""
    WITH pop AS ({_POPULATION})
    SELECT pop.idx, e.start_date - %(first)s::date,
           coalesce(e.end_date, %(last)s::date) - %(first)s::date, e.municipality,
           m.name, m.snai_class, m.area
    FROM enrolments e JOIN pop ON pop.id = e.patient_id
    JOIN municipalities m ON m.istat_code = e.municipality
    WHERE e.start_date <= %(last)s AND (e.end_date IS NULL OR e.end_date >= %(first)s)
    ORDER BY e.id
"""  # noqa: S608 - composed of constants; values are bound parameters

_READINGS = f"""
    COPY (
        WITH pop AS ({_POPULATION})
        SELECT pop.idx, (array_position(%(metrics)s::text[], r.metric) - 1)::int2,
               r.value, r.measured_at
        FROM readings r JOIN pop ON pop.id = r.patient_id
        WHERE r.metric = ANY(%(metrics)s::text[])
          AND r.measured_at >= %(weights_since)s AND r.measured_at < %(end)s
          AND (r.measured_at >= %(start)s OR r.metric = %(weight_metric)s)
    ) TO STDOUT (FORMAT BINARY)
"""  # noqa: S608 - composed of constants; values are bound parameters

_STORED = f"""
    WITH pop AS ({_POPULATION})
    SELECT a.rule, pop.idx, a.day - %(first)s::date
    FROM alerts a JOIN pop ON pop.id = a.patient_id
    WHERE a.day >= %(first)s AND a.day <= %(last)s
    ORDER BY a.rule
"""  # noqa: S608 - composed of constants; values are bound parameters

# one reading of the binary COPY: per field its length, then its big-endian value; a
# timestamptz is microseconds since 2000-01-01 UTC
_RECORD = np.dtype(
    [("fields", ">i2"),
     ("l1", ">i4"), ("patient", ">i4"), ("l2", ">i4"), ("metric", ">i2"),
     ("l3", ">i4"), ("value", ">f8"), ("l4", ">i4"), ("measured", ">i8")]
)  # fmt: skip
_FIELDS = 4
_POSTGRES_EPOCH_US = int(POSTGRES_EPOCH.timestamp()) * 1_000_000  # in Unix microseconds


def fetch_replay_data(
    conn: Connection, period: Period, population: str, plan: ReplayPlan, by: str | None
) -> ReplayData:
    """The ReplayData of one population over one period, read in one snapshot."""
    weights_since = day_start(period.start) - plan.longest_window
    params = {
        "simulated": population == "simulated",
        "first": period.start,
        "last": period.end - timedelta(days=1),
        "start": day_start(period.start),
        "end": day_start(period.end),
        "weights_since": min(weights_since, day_start(period.start)),
        "weight_metric": plan.weight_metric,
        "metrics": list(plan.metrics),
    }
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            return _read(conn, period, population, plan, by, params)
    finally:
        conn.read_only = False
        conn.isolation_level = None


def _read(  # noqa: PLR0917 - one call, from fetch_replay_data
    conn: Connection,
    period: Period,
    population: str,
    plan: ReplayPlan,
    by: str | None,
    params: dict[str, Any],
) -> ReplayData:
    row = conn.execute(_PATIENTS, params).fetchone()
    patients = int(row[0]) if row else 0
    enrolments = conn.execute(_ENROLMENTS, params).fetchall()
    patient_days, chosen = enrolled_days(
        period.days,
        patients,
        patient=np.array([e[0] for e in enrolments], dtype=np.int64),
        first=np.array([e[1] for e in enrolments], dtype=np.int64),
        last=np.array([e[2] for e in enrolments], dtype=np.int64),
        start=np.array([e[1] for e in enrolments], dtype=np.int64),
    )
    groups: tuple[str, ...] = ()
    titles: dict[str, str] = {}
    group = None
    if by is not None:
        column = {"municipality": 3, "snai_class": 5, "area": 6}[by]
        label_of = [str(e[column]) for e in enrolments]
        if by == "municipality":
            titles = {e[3]: f"{e[3]} {e[4]}" for e in enrolments}
        groups = tuple(sorted({label_of[i] for i in chosen if i >= 0}))
        number = {label: g for g, label in enumerate(groups)}
        group = np.array([number[label_of[i]] if i >= 0 else -1 for i in chosen], dtype=np.int64)
    stored: dict[str, tuple[list[int], list[int]]] = {}
    for rule, patient, day in conn.execute(_STORED, params):
        patients_of, days_of = stored.setdefault(rule, ([], []))
        patients_of.append(patient)
        days_of.append(day)
    return ReplayData(
        period=period,
        population=population,
        patients=patients,
        patient_days=patient_days,
        readings=_readings(conn, plan.metrics, params),
        stored={
            rule: StoredAlerts(np.array(p, dtype=np.int64), np.array(d, dtype=np.int64))
            for rule, (p, d) in stored.items()
        },
        by=by,
        groups=groups,
        group_titles=titles,
        group=group,
    )


def _readings(
    conn: Connection, metrics: tuple[str, ...], params: dict[str, Any]
) -> dict[str, MetricReadings]:
    """Per metric, its readings; each chunk is split by metric as it comes, so what is held
    is about the arrays themselves (20 bytes a reading), not the COPY's records."""
    parts: list[list[tuple[npt.NDArray[Any], ...]]] = [[] for _ in metrics]
    with conn.cursor() as cursor, cursor.copy(_READINGS, params) as copy:
        for records in copy_records(copy, _RECORD, _FIELDS):
            metric = records["metric"]
            for code in range(len(metrics)):
                rows = records[metric == code]
                if rows.size:
                    parts[code].append(
                        (rows["patient"].astype(np.int32), rows["value"], rows["measured"])
                    )
    found: dict[str, MetricReadings] = {}
    for code, name in enumerate(metrics):
        chunks = parts[code]
        parts[code] = []
        if not chunks:
            found[name] = MetricReadings()
            continue
        found[name] = MetricReadings(
            patient=np.concatenate([c[0] for c in chunks]).astype(np.int64),
            value=np.concatenate([c[1] for c in chunks]).astype(np.float64),
            measured_us=np.concatenate([c[2] for c in chunks]).astype(np.int64)
            + _POSTGRES_EPOCH_US,
        )
    return found
