"""The operations dashboard against the simulated pilot: every panel runs as the lab's role,
and its numbers equal counts made by hand from the store's own tables.

The demo week has no reject, duplicate or wrong clock, so one test adds them through ingest's
real code (judge and store_judged) inside a transaction that is rolled back: the shared store
is never changed, and the panels are read in that transaction as the lab's role.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from conftest import SimulatedPilot

from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.contract.topics import readings_topic
from ehealthlab.dashboards.latency import LATENCY_BOUNDS_S, histogram_quantile
from ehealthlab.dashboards.operations import operations_dashboard
from ehealthlab.dashboards.panels import datasource_uid, to_json_data
from ehealthlab.dashboards.queries import (
    PanelQuery,
    PanelResult,
    panel_queries,
    resolve_variables,
    run_panel,
)
from ehealthlab.dashboards.query_context import interval_for
from ehealthlab.gateway import broker_watch
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.readings import ReadingWriter

BOARD = to_json_data(operations_dashboard())
QUERIES = panel_queries(BOARD)


def _query(title: str, ref_id: str = "A") -> PanelQuery:
    (found,) = [q for q in QUERIES if q.title.startswith(title) and q.ref_id == ref_id]
    return found


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), PILOT_ZONE).astimezone(UTC)


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _bucket(moment: datetime, step: timedelta) -> float:
    seconds = step.total_seconds()
    return float(int(moment.timestamp() // seconds) * seconds)


def _step(query: PanelQuery, t0: datetime, t1: datetime) -> timedelta:
    return interval_for(
        t0, t1, max_data_points=query.max_data_points, min_interval=query.min_interval
    )


@pytest.fixture(scope="module")
def week(simulated_pilot: SimulatedPilot) -> tuple[datetime, datetime]:
    return _midnight(simulated_pilot.period.start), _midnight(simulated_pilot.period.end)


@pytest.fixture(scope="module")
def readings(simulated_pilot: SimulatedPilot) -> list[tuple[Any, ...]]:
    """Every stored reading, read by the owner: the hand counts' material."""
    with simulated_pilot.admin() as conn:
        return conn.execute(
            "SELECT device_id, at, measured_at, received_at, clock_corrected FROM readings"
        ).fetchall()


def _run_all(
    conn: psycopg.Connection[Any], pilot: SimulatedPilot, t0: datetime, t1: datetime
) -> dict[tuple[str, str], PanelResult]:
    variables = resolve_variables(conn, BOARD, t0, t1, timescaledb=pilot.timescaledb)
    return {
        (q.title, q.ref_id): run_panel(conn, q, t0, t1, variables, timescaledb=pilot.timescaledb)
        for q in QUERIES
    }


def test_the_dashboard_is_the_labs_and_grafanas_model() -> None:
    assert BOARD["uid"] == "ehl-operations"
    ids = [p["id"] for p in BOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert all("gridPos" in p for p in BOARD["panels"])
    assert {q.fmt for q in QUERIES} <= {"table", "time_series"}
    for panel in BOARD["panels"]:
        for target in panel.get("targets") or ():
            assert target["datasource"]["uid"] == datasource_uid("lab")
    assert any(p["type"] == "text" and "ehl_ingest_lag_seconds" in p["options"]["content"]
               for p in BOARD["panels"])  # fmt: skip


def test_every_panel_runs_as_the_lab_over_the_demo_week(
    simulated_pilot: SimulatedPilot, week: tuple[datetime, datetime]
) -> None:
    with simulated_pilot.login("lab") as conn:
        results = _run_all(conn, simulated_pilot, *week)
    empty = {name for name, result in results.items() if not result.rows}
    # the week has no reject, duplicate or dead letter (see the rolled-back test), and no device
    # is enrolled at its end (the enrolments end on its last day)
    assert empty == {
        ("Rejects by reason", "A"),
        ("Rejects by start-up and reason", "A"),
        ("Duplicates and redeliveries", "A"),
        ("Dead letters (whole messages kept)", "A"),
        ("Silent devices", "A"),
        ("Messages the broker dropped (lost)", "A"),
        ("Pages for the operator", "A"),
    }


def test_readings_per_interval_are_the_readings_received(
    simulated_pilot: SimulatedPilot,
    week: tuple[datetime, datetime],
    readings: list[tuple[Any, ...]],
) -> None:
    t0, t1 = week
    query = _query("Readings ingested per second")
    step = _step(query, t0, t1)
    with simulated_pilot.login("lab") as conn:
        result = _run_all(conn, simulated_pilot, t0, t1)[(query.title, "A")]
    by_hand = Counter(_bucket(r[3], step) for r in readings if t0 <= r[3] <= t1)
    drawn = {_epoch(row[0]): float(row[1]) * step.total_seconds() for row in result.rows}
    assert sum(by_hand.values()) > 500
    assert sum(drawn.values()) == pytest.approx(sum(by_hand.values()))
    assert drawn == pytest.approx({k: float(v) for k, v in by_hand.items()})


def test_hourly_rollup_counts_readings_by_measurement_hour(
    simulated_pilot: SimulatedPilot,
    week: tuple[datetime, datetime],
    readings: list[tuple[Any, ...]],
) -> None:
    t0, t1 = week  # midnights: whole hours, so the buckets from t0 to t1 are [t0, t1 + 1 h)
    query = _query("Readings stored per interval")
    with simulated_pilot.login("lab") as conn:
        result = _run_all(conn, simulated_pilot, t0, t1)[(query.title, "A")]
    by_hand = sum(1 for r in readings if t0 <= r[1] < t1 + timedelta(hours=1))
    assert sum(int(row[1]) for row in result.rows) == by_hand > 500


def test_latency_percentiles_are_the_histograms(
    simulated_pilot: SimulatedPilot,
    week: tuple[datetime, datetime],
    readings: list[tuple[Any, ...]],
) -> None:
    """The panel's p50 and p95 per interval are the latency histogram's, counted here from
    the readings themselves (whole hours, as the rollup keeps them)."""
    t0, t1 = week
    query = _query("Latency from measurement to storage")
    step = _step(query, t0, t1)
    with simulated_pilot.login("lab") as conn:
        result = _run_all(conn, simulated_pilot, t0, t1)[(query.title, "A")]
    latencies: dict[float, list[float]] = defaultdict(list)
    for _device, at, measured_at, received_at, _corrected in readings:
        if t0 <= at < t1 + timedelta(hours=1):
            latencies[_bucket(at, step)].append((received_at - measured_at).total_seconds())
    assert max(max(v) for v in latencies.values()) > 3600  # the outage's backlog is there
    drawn = {_epoch(t): (p50, p95) for t, p50, p95 in result.rows}
    assert drawn.keys() == latencies.keys()
    for bucket, values in latencies.items():
        cumulative = [sum(1 for v in values if v <= bound) for bound in LATENCY_BOUNDS_S]
        expected = tuple(histogram_quantile(q, cumulative, len(values)) for q in (0.5, 0.95))
        assert drawn[bucket] == pytest.approx(expected, abs=1e-6)


def test_silent_devices_are_those_without_a_reading_for_a_day(
    simulated_pilot: SimulatedPilot, readings: list[tuple[Any, ...]]
) -> None:
    end = datetime(2026, 3, 15, 20, 0, tzinfo=UTC)  # the demo week's last evening
    start = end - timedelta(days=1)
    with simulated_pilot.admin() as conn:
        enrolled = {
            device
            for (device,) in conn.execute(
                "SELECT e.device_id FROM enrolments e JOIN devices d USING (device_id)"
                " WHERE e.care_plan <> '{}' AND d.revoked_at IS NULL"
                " AND e.start_date <= %(day)s AND (e.end_date IS NULL OR e.end_date >= %(day)s)",
                {"day": end.astimezone(PILOT_ZONE).date()},
            )
        }
    last: dict[str, datetime] = {}
    for device, at, measured_at, _received, _corrected in readings:
        if end - timedelta(days=7) < at <= end and end - timedelta(days=7) < measured_at <= end:
            last[device] = max(measured_at, last.get(device, measured_at))
    silent = {d for d in enrolled if d not in last or last[d] < end - timedelta(hours=24)}
    with simulated_pilot.login("lab") as conn:
        result = _run_all(conn, simulated_pilot, start, end)[("Silent devices", "A")]
    assert silent and silent < enrolled
    assert {row[1] for row in result.rows} == silent
    assert {row[1]: row[4] for row in result.rows} == {d: last.get(d) for d in silent}


# -- rejects, duplicates, dead letters and wrong clocks, added inside a rolled-back transaction


def _message(device: str, readings: list[dict[str, Any]], msg_id: str, sent_at: datetime) -> bytes:
    body = {"schema": "ehl.readings/1", "msg_id": msg_id, "sent_at": sent_at.isoformat()}
    return orjson.dumps({**body, "readings": readings})


def _bp(seq: int, at: datetime, systolic: float) -> list[dict[str, Any]]:
    stamp = at.isoformat()
    return [
        {"seq": seq, "metric": "bp_systolic", "value": systolic, "unit": "mm[Hg]", "at": stamp},
        {"seq": seq + 1, "metric": "bp_diastolic", "value": 80, "unit": "mm[Hg]", "at": stamp},
    ]


@pytest.fixture
def troubled(simulated_pilot: SimulatedPilot) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection in an open transaction holding, through ingest's own code, a
    wrong clock, an out-of-range reading, unparseable JSON, a topic of no registered device,
    readings sent again in a new message and a message delivered again; and, through the broker
    watch's code, the broker's dropped-messages counter growing. Rolled back after."""
    conn = psycopg.connect(simulated_pilot.url)
    try:
        row = conn.execute(
            "SELECT device_id, device_type, simulated FROM devices"
            " WHERE device_type = 'blood_pressure_monitor' ORDER BY device_id LIMIT 1"
        ).fetchone()
        assert row is not None
        device, device_type, simulated = row
        received = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
        at = received - timedelta(minutes=5)
        topic = readings_topic(device)
        wrong_clock = _message(
            device, _bp(900_001, at, 120), "ops-1", received + timedelta(hours=2)
        )
        out_of_range = _message(
            device, _bp(900_003, at + timedelta(minutes=1), 900), "ops-2", received
        )
        again = _message(device, _bp(900_001, at, 120), "ops-3", received)  # fmt: skip
        arrivals = [
            (topic, wrong_clock, received),
            (topic, out_of_range, received + timedelta(minutes=1)),
            (topic, b"{not json", received + timedelta(minutes=2)),
            (readings_topic("nobody-0001"), again, received + timedelta(minutes=3)),
            (topic, again, received + timedelta(hours=3)),
            (topic, out_of_range, received + timedelta(hours=4)),  # delivered again
        ]
        known = {device: KnownDevice(device_type, simulated)}
        writer = ReadingWriter(conn)
        for mid, (where, payload, when) in enumerate(arrivals, 1):
            judged = judge(ReceivedMessage(where, payload, 1, False, mid, when), known.get)
            store_judged(conn, writer, [judged], DEFAULT_RULES)
        for count, when in [
            (b"0", received),  # the first count seen: recorded, nothing dropped
            (b"7", received + timedelta(minutes=10)),
            (b"7", received + timedelta(minutes=20)),  # unchanged: not recorded
            (b"9", received + timedelta(days=30)),  # after the week
        ]:
            broker_watch.record(conn, count, when)
        yield conn
    finally:
        conn.rollback()
        conn.close()


def _as_lab(conn: psycopg.Connection[Any], pilot: SimulatedPilot) -> None:
    """The rest of the transaction as the lab's role, as its data source logs in."""
    role = pilot.roles["lab"].role_name
    conn.execute(f'SET LOCAL ROLE "{role}"')
    conn.execute("SET LOCAL search_path = lab_dashboard, public")


def test_rejects_duplicates_dead_letters_and_clocks_equal_counts_by_hand(
    simulated_pilot: SimulatedPilot,
    week: tuple[datetime, datetime],
    troubled: psycopg.Connection[Any],
) -> None:
    t0, t1 = week
    conn = troubled
    rejects = conn.execute(
        "SELECT x.received_at, x.device_id, x.reason, x.item_index, o.name"
        " FROM rejected_readings x LEFT JOIN devices d USING (device_id)"
        " LEFT JOIN organisations o ON o.id = d.organisation_id"
        " WHERE x.received_at BETWEEN %s AND %s",
        (t0, t1),
    ).fetchall()
    duplicates = conn.execute(
        "SELECT count(*) FROM duplicate_readings WHERE received_at BETWEEN %s AND %s", (t0, t1)
    ).fetchone()
    stored = conn.execute(
        "SELECT received_at, clock_corrected FROM readings WHERE received_at BETWEEN %s AND %s",
        (t0, t1),
    ).fetchall()
    _as_lab(conn, simulated_pilot)
    results = _run_all(conn, simulated_pilot, t0, t1)
    assert not {name for name, result in results.items() if not result.rows} - {
        ("Silent devices", "A")
    }

    reasons = Counter(r[2] for r in rejects)
    assert reasons == {"out_of_range": 1, "malformed_json": 1, "schema_violation": 1}
    drawn = Counter[str]()
    for _time, reason, count in results[("Rejects by reason", "A")].rows:
        drawn[reason] += count
    assert drawn == reasons

    by_startup = Counter((r[4] or "(not a registered device)", r[2]) for r in rejects)
    table = results[("Rejects by start-up and reason", "A")].rows
    assert {(row[0], row[1]): row[2] for row in table} == by_startup
    assert sum(row[3] for row in table) == sum(r[3] is None for r in rejects) == 2

    dead = results[("Dead letters (whole messages kept)", "A")].rows
    assert sorted((row[1], row[3], row[2]) for row in dead) == sorted(
        (r[1], r[2], r[4] is not None) for r in rejects if r[3] is None
    )

    lost = results[("Messages the broker dropped (lost)", "A")].rows
    assert [(_epoch(row[0]), row[1], row[2]) for row in lost] == [
        (datetime(2026, 3, 10, 10, 10, tzinfo=UTC).timestamp(), 7, 7)
    ]
    # each drop raised a page; none is sent (no pager here), so the one after the week shows too
    pages = results[("Pages for the operator", "A")].rows
    assert [(_epoch(row[0]), row[1], row[3], row[4]) for row in pages] == [
        (datetime(2026, 4, 9, 10, 0, tzinfo=UTC).timestamp(), "broker_drops", None, 0),
        (datetime(2026, 3, 10, 10, 10, tzinfo=UTC).timestamp(), "broker_drops", None, 0),
    ]
    assert "dropped 7 message(s)" in pages[1][2]

    assert duplicates == (2,)
    series = results[("Duplicates and redeliveries", "A")].rows
    assert sum(row[1] for row in series) == 2
    assert sum(row[1] for row in results[("Duplicates and redeliveries", "B")].rows) == 1

    query = _query("Clock-corrected share")
    step = _step(query, t0, t1)
    total, corrected = Counter[float](), Counter[float]()
    for received_at, clock_corrected in stored:
        total[_bucket(received_at, step)] += 1
        corrected[_bucket(received_at, step)] += clock_corrected
    shares = {
        _epoch(t): share for t, share in results[(query.title, "A")].rows if share is not None
    }
    assert shares == pytest.approx({b: corrected[b] / total[b] for b in total})
    assert sum(corrected.values()) == 2


def test_receive_time_panels_read_the_hourly_rollup_from_an_hours_interval(
    simulated_pilot: SimulatedPilot,
    week: tuple[datetime, datetime],
    troubled: psycopg.Connection[Any],
) -> None:
    """Over a month (interval 6 h) the receive-time panels read messages_hourly, kept by
    triggers: it holds the troubled messages (inserted) and the redelivery (an update)."""
    t1 = week[1]
    t0 = t1 - timedelta(days=30)
    conn = troubled
    logged = conn.execute(
        "SELECT received_at, accepted, duplicates, rejected, deliveries, clock_offset_s"
        " FROM device_messages"
    ).fetchall()
    _as_lab(conn, simulated_pilot)
    results = _run_all(conn, simulated_pilot, t0, t1)
    step = _step(_query("Readings ingested per second"), t0, t1)
    assert step == _step(_query("Clock-corrected share"), t0, t1) == timedelta(hours=6)
    kept = [m for m in logged if t0 <= _floor_hour(m[0]) <= t1]
    stored, duplicates, rejected, again, corrected = (Counter[float]() for _ in range(5))
    for received_at, accepted, dup, rej, deliveries, offset in kept:
        b = _bucket(received_at, step)
        stored[b] += accepted
        duplicates[b] += dup
        rejected[b] += rej
        again[b] += deliveries - 1
        corrected[b] += accepted if offset is not None and abs(offset) > 120 else 0
    rates = results[("Readings ingested per second", "A")].rows
    assert {_epoch(r[0]): float(r[1]) * step.total_seconds() for r in rates} == pytest.approx(
        {b: float(n) for b, n in stored.items()}
    )
    seconds = step.total_seconds()
    assert sum(duplicates.values()) == 2 and sum(rejected.values()) > 0
    assert sum(float(r[2]) * seconds for r in rates) == pytest.approx(2)
    assert sum(float(r[3]) * seconds for r in rates) == pytest.approx(sum(rejected.values()))
    redelivered = results[("Duplicates and redeliveries", "B")].rows
    assert {_epoch(r[0]): r[1] for r in redelivered if r[1]} == {
        b: n for b, n in again.items() if n
    }
    assert sum(again.values()) == 1
    shares = {_epoch(r[0]): r[1] for r in results[("Clock-corrected share", "A")].rows}
    assert shares == pytest.approx(
        {b: corrected[b] / stored[b] if stored[b] else None for b in stored}
    )
    assert sum(corrected.values()) == 2


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)
