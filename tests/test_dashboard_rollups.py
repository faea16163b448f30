"""The dashboards' rollups (migration 0022) and the latency percentiles read from them.

The histogram quantile is checked twice: the Python reference against cases worked by hand,
and the SQL the panels run against the reference over generated histograms. The rollups are
checked on both store forms against a count by hand of what was stored — by the writer, with
a batch sent again and readings an enrolment attributes later, and by hand around it — and
against a rebuild from the readings themselves.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from ehealthlab.dashboards.latency import (
    COLUMNS,
    LATENCY_BOUNDS_S,
    counts_sql,
    histogram_quantile,
    quantile_sql,
)
from ehealthlab.store.readings import ReadingRow, ReadingWriter, attribute_unassigned

ROME = ZoneInfo("Europe/Rome")
TORINO, LANZO = "001272", "001127"


def cumulative(latencies: list[float]) -> list[int]:
    return [sum(1 for v in latencies if v <= bound) for bound in LATENCY_BOUNDS_S]


# -- the quantile ------------------------------------------------------------------------------

N = len(LATENCY_BOUNDS_S)


@pytest.mark.parametrize(
    ("q", "counts", "total", "expected"),
    [
        (0.5, [0] * N, 0, None),  # nothing measured
        (0.95, [7] * N, 7, 0.0),  # all at or below the first bound (0 s)
        (0.5, [0, 0] + [4] * (N - 2), 4, 1.5),  # all in (1 s, 2 s]: half way
        (1.0, [0] + [4] * (N - 1), 4, 1.0),  # all in (0, 1 s]: the top is the bound
        (0.5, [0] * N, 5, 259200.0),  # all beyond the last bound: the last bound
        (0.25, [0, 1, 2, 3] + [4] * (N - 4), 4, 1.0),  # one per bucket: exact at bounds
        (0.5, [0, 0, 0, 0, 0, 0, 0, 10] + [20] * (N - 8), 20, 60.0),  # 10 in (30, 60], 10 above
        (0.75, [0, 0, 0, 0, 0, 0, 0, 10] + [20] * (N - 8), 20, 90.0),  # 60 + 60 * 5 / 10
    ],
)
def test_histogram_quantile_by_hand(
    q: float, counts: list[int], total: int, expected: float | None
) -> None:
    assert histogram_quantile(q, counts, total) == (
        None if expected is None else pytest.approx(expected)
    )


def test_histogram_quantile_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="counts for"):
        histogram_quantile(0.5, [1, 2], 2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile_sql(1.5, "h")
    with pytest.raises(ValueError, match="identifiers"):
        quantile_sql(0.5, "h; DROP TABLE readings")


@pytest.fixture(scope="module")
def sql_conn(plain_admin_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(plain_admin_url, autocommit=True) as conn:
        yield conn


def _sql_quantiles(conn: psycopg.Connection, latencies: list[float]) -> tuple[Any, ...]:
    """The panels' SQL over a histogram counted by SQL from the latencies themselves."""
    row = conn.execute(
        f"SELECT {quantile_sql(0.0, 'h')}, {quantile_sql(0.5, 'h')},"  # noqa: S608 (own SQL)
        f" {quantile_sql(0.95, 'h')}, {quantile_sql(1.0, 'h')}"
        f" FROM (SELECT count(*) AS readings, {counts_sql('x.v')}"
        "        FROM unnest(%s::float8[]) x(v)) h",
        (latencies,),
    ).fetchone()
    assert row is not None
    return tuple(row)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-300, max_value=400_000, allow_nan=False),
            st.sampled_from([float(b) for b in LATENCY_BOUNDS_S]),  # on a bound exactly
        ),
        max_size=60,
    )
)
def test_the_panels_sql_is_the_reference(
    sql_conn: psycopg.Connection, latencies: list[float]
) -> None:
    expected = tuple(
        histogram_quantile(q, cumulative(latencies), len(latencies)) for q in (0.0, 0.5, 0.95, 1.0)
    )
    got = _sql_quantiles(sql_conn, latencies)
    if not latencies:
        assert got == (None,) * 4
    else:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


# -- the rollups the writer keeps ------------------------------------------------------------

DAY = date(2026, 5, 4)
# seconds, one of each kind: at a bound, a microsecond past one, a clock ahead, past them all
LATENCIES = (0.4, 1.5, 30.0, 45.0, 7200.0, 0.0, 1.000001, -20.0, 300000.0)


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ROME).astimezone(UTC)


def _rows(device: str, metric: str, first: int) -> list[ReadingRow]:
    """Readings over three pilot days — one at 23:30, Rome's next UTC day — with every
    kind of latency."""
    rows = []
    for d in range(3):
        for i, latency in enumerate(LATENCIES):
            at = _at(DAY + timedelta(days=d), 7 + 2 * i, 30 if i == 0 else 0)
            if i == len(LATENCIES) - 1:
                at = _at(DAY + timedelta(days=d), 23, 30)
            seq = first + d * 10 + i
            rows.append(
                ReadingRow(device, metric, at, 100.0 + i, at, at + timedelta(seconds=latency),
                           seq, f"{device}-m{seq}", 0.0, False)
            )  # fmt: skip
    return rows


def _snapshot(conn: psycopg.Connection) -> dict[str, Any]:
    """The three rollups, summed over their slots."""
    le = ", ".join(f"sum({c})::bigint" for c in COLUMNS)
    return {
        "fleet": {
            tuple(r[:3]): tuple(r[3:])
            for r in conn.execute(
                f"SELECT bucket, organisation_id, device_type, sum(readings)::bigint, {le}"  # noqa: S608
                " FROM readings_fleet_hourly GROUP BY 1, 2, 3 HAVING sum(readings) <> 0"
            ).fetchall()
        },
        "municipality": {
            tuple(r[:3]): tuple(r[3:])
            for r in conn.execute(
                f"SELECT bucket, organisation_id, municipality, sum(readings)::bigint, {le}"  # noqa: S608
                " FROM readings_municipality_hourly GROUP BY 1, 2, 3 HAVING sum(readings) <> 0"
            ).fetchall()
        },
        "patient": {
            (r[0], r[1], r[2]): r[3]
            for r in conn.execute(
                "SELECT organisation_id, day, patient_id, counts FROM readings_patient_daily"
            ).fetchall()
        },
    }


def _by_hand(stored: list[tuple[ReadingRow, dict[str, Any] | None]]) -> dict[str, Any]:
    """What the rollups must hold: each stored reading once, with its device's start-up and
    type and, when an enrolment covers its pilot day, the enrolment's municipality, patient
    and provider."""
    fleet: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    municipality: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    patient: dict[tuple[Any, ...], Counter[str]] = defaultdict(Counter)
    for row, device in ((r, d) for r, d in stored if d is not None):
        hour = row.at.replace(minute=0, second=0, microsecond=0)
        latency = (row.received_at - row.measured_at).total_seconds()
        enrolment = device["enrolment"](row.measured_at.astimezone(ROME).date())
        fleet[(hour, device["organisation"], device["type"])].append(latency)
        place = enrolment["municipality"] if enrolment else ""
        municipality[(hour, device["organisation"], place)].append(latency)
        if enrolment:
            day = row.measured_at.astimezone(ROME).date()
            patient[(enrolment["provider"], day, enrolment["patient"])][row.metric] += 1

    def histogram(values: list[float]) -> tuple[int, ...]:
        return (len(values), *cumulative(values))

    return {
        "fleet": {k: histogram(v) for k, v in fleet.items()},
        "municipality": {k: histogram(v) for k, v in municipality.items()},
        "patient": {k: dict(v) for k, v in patient.items()},
    }


def _startup_with_a_cuff_and_an_oximeter(conn: psycopg.Connection) -> dict[str, Any]:
    """A start-up ("S") with devices `cuff` and `oxi`, and a provider ("P"): their ids."""
    org = {}
    for key, kind in (("S", "startup"), ("P", "provider")):
        org[key] = conn.execute(
            "INSERT INTO organisations (kind, name) VALUES (%s, %s) RETURNING id",
            (kind, f"{key} {uuid.uuid4().hex[:6]}"),
        ).fetchone()[0]  # type: ignore[index]
    for device, kind in (("cuff", "blood_pressure_monitor"), ("oxi", "pulse_oximeter")):
        conn.execute(
            "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
            " VALUES (%s, %s, %s, 'M', %s)",
            (device, org["S"], kind, device),
        )
    return org


# a patient-day's counts by metric, added as a batch lands on a day already counted (0037)
COUNTS_ADDED = [
    ({"spo2": 2}, {"spo2": 3}, {"spo2": 5}),
    ({"spo2": 2}, {"heart_rate": 1}, {"spo2": 2, "heart_rate": 1}),
    ({"bp_systolic": 1, "bp_diastolic": 1}, {"bp_systolic": 2, "heart_rate": 4},
     {"bp_systolic": 3, "bp_diastolic": 1, "heart_rate": 4}),
    ({}, {"spo2": 1}, {"spo2": 1}),
    ({"spo2": 7}, {}, {"spo2": 7}),
    ({"spo2": 4_000_000_000}, {"spo2": 4_000_000_000}, {"spo2": 8_000_000_000}),
]  # fmt: skip


@pytest.mark.parametrize(("stored", "batch", "expected"), COUNTS_ADDED)
def test_a_days_counts_add_key_by_key(
    store_url: str, stored: dict[str, int], batch: dict[str, int], expected: dict[str, int]
) -> None:
    with psycopg.connect(store_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT ehl_jsonb_counts_add(%s::jsonb, %s::jsonb)",
            (Jsonb(stored), Jsonb(batch)),
        ).fetchone()
    assert row is not None
    assert row[0] == expected


def test_the_triggers_roll_up_each_stored_reading_once_as_a_rebuild_does(store_url: str) -> None:
    with psycopg.connect(store_url, autocommit=True) as conn:
        org = _startup_with_a_cuff_and_an_oximeter(conn)
        patients = [
            conn.execute(
                "INSERT INTO patients (organisation_id, identifier_hash, label)"
                " VALUES (%s, %s, %s) RETURNING id",
                (org["P"], uuid.uuid4().bytes, label),
            ).fetchone()[0]  # type: ignore[index]
            for label in ("p1", "p2")
        ]
        # the cuff is enrolled from the second day on; the oximeter only after its readings
        conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, care_plan)"
            " VALUES (%s, 'cuff', %s, %s, '{\"bp_systolic\": 2}')",
            (patients[0], TORINO, DAY + timedelta(days=1)),
        )
        cuff = _rows("cuff", "bp_systolic", 0) + _rows("cuff", "heart_rate", 100)
        oxi = _rows("oxi", "spo2", 200)
        writer = ReadingWriter(conn)
        first = writer.write(cuff[:20] + oxi)
        again = writer.write(cuff[10:])  # ten readings sent again: stored once
        assert (first.inserted, again.inserted) == (20 + len(oxi), len(cuff) - 20)
        enrolment = conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, care_plan)"
            " VALUES (%s, 'oxi', %s, %s, '{\"spo2\": 1}') RETURNING id",
            (patients[1], LANZO, DAY + timedelta(days=2)),
        ).fetchone()[0]  # type: ignore[index]
        attributed = attribute_unassigned(conn, enrolment)
        assert len(attributed) == len(LATENCIES)  # the oximeter's third day
        # written around the platform's writer, by hand: the triggers roll it up all the same
        at = _at(DAY + timedelta(days=1), 10, 15)
        by_hand = ReadingRow("cuff", "bp_diastolic", at, 80.0, at, at + timedelta(seconds=3), 1,
                             "by-hand", 0.0, False)  # fmt: skip
        conn.execute(
            "INSERT INTO readings (device_id, metric, at, value, measured_at, received_at, seq,"
            " msg_id, clock_offset_s, clock_corrected, patient_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, false, %s)",
            (by_hand.device_id, by_hand.metric, at, by_hand.value, at, by_hand.received_at,
             by_hand.seq, by_hand.msg_id, patients[0]),
        )  # fmt: skip
        cuff.append(by_hand)

        def enrolled(device: str, since: date, place: str, patient: Any) -> Any:
            def covering(day: date) -> dict[str, Any] | None:
                if day < since:
                    return None
                return {"municipality": place, "patient": patient, "provider": org["P"]}

            return {"organisation": org["S"], "type": device, "enrolment": covering}

        devices = {
            "cuff": enrolled("blood_pressure_monitor", DAY + timedelta(1), TORINO, patients[0]),
            "oxi": enrolled("pulse_oximeter", DAY + timedelta(2), LANZO, patients[1]),
        }
        expected = _by_hand([(r, devices[r.device_id]) for r in cuff + oxi])
        incremental = _snapshot(conn)
        assert incremental == expected
        assert {k[2] for k in incremental["municipality"]} == {"", TORINO, LANZO}
        assert len(incremental["patient"]) == 3  # the cuff's two enrolled days, the oxi's one
        # each device's newest reading (migration 0024), whichever batch brought it
        # with its metric (the first by name of those measured at that moment) and receive
        # time (migration 0026)
        newest = {
            d: rest
            for d, *rest in conn.execute(
                "SELECT device_id, measured_at, metric, received_at FROM device_last_readings"
            )
        }
        expected_newest = {}
        for device in ("cuff", "oxi"):
            mine = [r for r in cuff + oxi if r.device_id == device]
            last = min(mine, key=lambda r: (-r.measured_at.timestamp(), r.metric))
            expected_newest[device] = [last.measured_at, last.metric, last.received_at]
        assert newest == expected_newest
        judging = "SELECT day, patient_id, adherent, taken FROM readings_patient_daily ORDER BY 1,2"
        judged = conn.execute(judging).fetchall()
        # the cuff's patient: systolic planned twice a day; the oximeter's: spo2 once
        assert {(d, p): (a, t) for d, p, a, t in judged} == {
            (DAY + timedelta(1), patients[0]): (True, 2),
            (DAY + timedelta(2), patients[0]): (True, 2),
            (DAY + timedelta(2), patients[1]): (True, 1),
        }
        rebuilt = conn.execute("SELECT ehl_dashboard_rollups_rebuild()").fetchone()
        assert rebuilt == (len(cuff) + len(oxi),)
        assert _snapshot(conn) == incremental
        assert conn.execute(judging).fetchall() == judged


# -- each patient-day judged against its care plans (migration 0023) ---------------------------


def _judged(conn: psycopg.Connection) -> dict[date, tuple[bool, int]]:
    return {
        day: (adherent, taken)
        for day, adherent, taken in conn.execute(
            "SELECT day, adherent, taken FROM readings_patient_daily ORDER BY day"
        ).fetchall()
    }


def test_each_patient_day_is_judged_against_the_plans_covering_it_and_again_when_they_change(
    store_url: str,
) -> None:
    """Adherent: every planned metric has a reading; taken: each metric's readings capped at
    its plan. A second enrolment (another device), an edited care plan, a shortened
    enrolment and a removed one each judge the covered days again."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        org = _startup_with_a_cuff_and_an_oximeter(conn)
        patient = conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, %s, 'p') RETURNING id",
            (org["P"], uuid.uuid4().bytes),
        ).fetchone()[0]  # type: ignore[index]
        cuff = conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, care_plan)"
            " VALUES (%s, 'cuff', %s, %s, '{\"bp_systolic\": 2, \"heart_rate\": 1}')"
            " RETURNING id",
            (patient, TORINO, DAY),
        ).fetchone()[0]  # type: ignore[index]
        days = [DAY + timedelta(days=d) for d in range(3)]
        # day 1: systolic x3, pulse x1 -> adherent, 2 + 1 taken (the third systolic capped)
        # day 2: systolic x1 only -> not adherent, 1 taken
        # day 3: systolic x2, pulse x2 -> adherent, 2 + 1 taken
        plan = {days[0]: {"bp_systolic": 3, "heart_rate": 1}, days[1]: {"bp_systolic": 1},
                days[2]: {"bp_systolic": 2, "heart_rate": 2}}  # fmt: skip
        rows, seq = [], 0
        for day, counts in plan.items():
            for metric, n in counts.items():
                for i in range(n):
                    seq += 1
                    at = _at(day, 8 + i)
                    rows.append(ReadingRow("cuff", metric, at, 100.0, at, at, seq, f"m{seq}",
                                           0.0, False))  # fmt: skip
        # day 1's two first systolic readings alone, then the rest: a stored day's counts
        # grow, and it is judged on them
        ReadingWriter(conn).write(rows[:2])
        assert _judged(conn) == {days[0]: (False, 2)}
        ReadingWriter(conn).write(rows[2:])
        assert _judged(conn) == {days[0]: (True, 3), days[1]: (False, 1), days[2]: (True, 3)}

        # an oximeter enrolled from day 2 asks for spo2, which nobody measured
        oxi = conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, care_plan)"
            " VALUES (%s, 'oxi', %s, %s, '{\"spo2\": 1}') RETURNING id",
            (patient, TORINO, days[1]),
        ).fetchone()[0]  # type: ignore[index]
        assert _judged(conn) == {days[0]: (True, 3), days[1]: (False, 1), days[2]: (False, 3)}
        # the cuff's plan asks for one systolic a day now: day 2 is adherent for the cuff
        conn.execute(
            "UPDATE enrolments SET care_plan = '{\"bp_systolic\": 1}' WHERE id = %s", (cuff,)
        )
        assert _judged(conn) == {days[0]: (True, 1), days[1]: (False, 1), days[2]: (False, 1)}
        # the oximeter's enrolment ends on day 2, then is removed: day 3, then 2, are the cuff's
        conn.execute("UPDATE enrolments SET end_date = %s WHERE id = %s", (days[1], oxi))
        assert _judged(conn) == {days[0]: (True, 1), days[1]: (False, 1), days[2]: (True, 1)}
        conn.execute("DELETE FROM enrolments WHERE id = %s", (oxi,))
        assert _judged(conn) == {days[0]: (True, 1), days[1]: (True, 1), days[2]: (True, 1)}
