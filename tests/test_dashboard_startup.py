"""The start-up dashboard against real stores, as the start-up's own role: every panel runs on
the simulated demo week, its fleet counts equal a count by hand, rejects and conformance
problems equal what was sent to a store of our own (the simulator injects no faults into the
shared pilot), and a second start-up never sees a device of the first.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest
from conftest import SimulatedPilot, drop_database, migrated_store, with_database

from ehealthlab.contract.topics import readings_topic
from ehealthlab.dashboards.latency import LATENCY_BOUNDS_S, histogram_quantile
from ehealthlab.dashboards.panels import to_json_data
from ehealthlab.dashboards.queries import (
    PanelResult,
    panel_queries,
    resolve_variables,
    run_panel,
)
from ehealthlab.dashboards.roles import RoleCredentials, create_role, list_roles, revoke_role
from ehealthlab.dashboards.startup import startup_dashboard
from ehealthlab.gateway import device_registry, organisation_registry
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.readings import ReadingWriter

ROME = ZoneInfo("Europe/Rome")
BOARD = to_json_data(startup_dashboard())
QUERIES = panel_queries(BOARD)
STARTUP = "Alpi Digital Health"  # the start-up of both simulated runs
#: panels that show rejects only: empty where nothing was rejected
REJECT_PANELS = {"Rejected readings by reason", "Rejection reasons"}


def run_all(
    conn: psycopg.Connection, start: datetime, end: datetime, *, timescaledb: bool
) -> dict[str, PanelResult]:
    variables = resolve_variables(conn, BOARD, start, end, timescaledb=timescaledb)
    return {
        q.title: run_panel(conn, q, start, end, variables, timescaledb=timescaledb) for q in QUERIES
    }


def rome(day: date, hour: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=ROME)


def cells(results: dict[str, PanelResult]) -> set[str]:
    return {str(v) for r in results.values() for row in r.rows for v in row if v is not None}


# -- the board itself ------------------------------------------------------------------------


def test_the_board_has_its_uid_a_device_selector_and_a_battery_note_without_query() -> None:
    assert BOARD["uid"] == "ehl-startup"
    [device] = BOARD["templating"]["list"]
    assert (device["name"], device["multi"], device["includeAll"]) == ("device", True, True)
    # every panel filters by the device selection, but the banner saying whether the
    # start-up's data are simulated (tests/test_dashboards.py)
    assert all("IN ($device)" in q.raw_sql for q in QUERIES if q.title != "Data")
    battery = [p for p in BOARD["panels"] if p["title"] == "Battery"]
    assert battery and battery[0]["type"] == "text" and not battery[0].get("targets")
    assert len({p["id"] for p in BOARD["panels"]}) == len(BOARD["panels"])
    assert {q.title for q in QUERIES} >= REJECT_PANELS


# -- the simulated pilot -----------------------------------------------------------------------


def test_every_panel_returns_rows_over_the_demo_week(simulated_pilot: SimulatedPilot) -> None:
    pilot = simulated_pilot
    start, end = rome(pilot.period.start), rome(pilot.period.end)
    with pilot.login("startup") as conn:
        results = run_all(conn, start, end, timescaledb=pilot.timescaledb)
    with pilot.admin() as admin:
        row = admin.execute(
            "SELECT count(*) FROM rejected_readings x JOIN devices d USING (device_id)"
            " WHERE d.organisation_id = %s AND x.received_at BETWEEN %s AND %s",
            (pilot.runs[0].organisations[STARTUP]["id"], start, end),
        ).fetchone()
        judged = admin.execute(
            "SELECT count(*) FROM device_messages x JOIN devices d USING (device_id)"
            " WHERE d.organisation_id = %s AND x.received_at BETWEEN %s AND %s",
            (pilot.runs[0].organisations[STARTUP]["id"], end - timedelta(hours=24), end),
        ).fetchone()
    assert row is not None and judged is not None
    rejects = row[0]
    for title, result in results.items():
        if title in REJECT_PANELS and rejects == 0:
            assert result.rows == [], title  # the simulator sent nothing to reject
        elif title == "Conformance problems per device" and judged[0] == 0:
            assert result.rows == [], title  # nothing received in the last 24 hours
        else:
            assert result.rows, title
    [counts] = results["Fleet: online, offline, silent"].rows
    assert sum(counts[:4]) == len(results["Devices"].rows) == 34


def _hand_count(admin: psycopg.Connection, organisation_id: str, end: datetime) -> dict[str, Any]:
    """Presence now and silence at `end`, from the tables, in Python."""
    devices = admin.execute(
        "SELECT device_id, status, revoked_at FROM devices WHERE organisation_id = %s",
        (organisation_id,),
    ).fetchall()
    ids = [d for d, _, _ in devices]
    enrolments = admin.execute(
        "SELECT device_id, start_date, end_date FROM enrolments WHERE device_id = ANY(%s)",
        (ids,),
    ).fetchall()
    readings = admin.execute(
        "SELECT device_id, measured_at FROM readings WHERE device_id = ANY(%s)", (ids,)
    ).fetchall()
    day = end.astimezone(ROME).date()
    live = {d for d, _, revoked in devices if revoked is None or revoked > end}
    enrolled = {
        d: start
        for d, start, last in enrolments
        if d in live and start <= day and (last is None or day <= last)
    }
    heard = {d for d, at in readings if end - timedelta(hours=24) < at <= end}
    silent = {
        d for d, start in enrolled.items() if rome(start) <= end - timedelta(hours=24)
    } - heard
    presence = Counter(status for d, status, _ in devices if d in live)
    return {
        "counts": (
            presence["online"],
            presence["offline"],
            presence["never_seen"],
            len(devices) - len(live),
            len(enrolled),
            len(silent),
        ),
        "silent": silent,
    }


def test_online_offline_and_silent_equal_a_count_by_hand(simulated_pilot: SimulatedPilot) -> None:
    pilot = simulated_pilot
    first = pilot.runs[0].organisations[STARTUP]["id"]
    week = pilot.period.start
    ends = [
        rome(week + timedelta(1), 12),
        rome(week + timedelta(3), 12),
        rome(week + timedelta(5), 21),
        rome(week + timedelta(6), 23),
        rome(pilot.period.end),
    ]
    silent_seen = 0
    with pilot.login("startup") as conn, pilot.admin() as admin:
        for end in ends:
            results = run_all(conn, end - timedelta(days=1), end, timescaledb=pilot.timescaledb)
            expected = _hand_count(admin, first, end)
            [counts] = results["Fleet: online, offline, silent"].rows
            assert tuple(counts) == expected["counts"], end
            table = results["Devices"]
            device, silent = table.columns.index("device"), table.columns.index("silent")
            assert {row[device] for row in table.rows if row[silent]} == expected["silent"]
            silent_seen += len(expected["silent"])
    assert silent_seen > 0  # the week has devices that went quiet: the check can fail


def _latency_by_hand(
    readings: list[tuple[Any, ...]], names: dict[str | None, str]
) -> dict[str, tuple[int, float | None, float | None]]:
    """Municipality -> (readings, p50, p95) of the latency histogram, from (municipality,
    latency) rows."""
    groups: dict[str, list[float]] = {}
    for municipality, latency in readings:
        groups.setdefault(names.get(municipality, "(not enrolled)"), []).append(latency)
    result = {}
    for name, values in groups.items():
        cumulative = [sum(1 for v in values if v <= b) for b in LATENCY_BOUNDS_S]
        result[name] = (
            len(values),
            histogram_quantile(0.5, cumulative, len(values)),
            histogram_quantile(0.95, cumulative, len(values)),
        )
    return result


def test_latency_and_readings_by_type_equal_a_count_by_hand_for_the_fleet_and_a_selection(
    simulated_pilot: SimulatedPilot,
) -> None:
    """With every device selected the two panels read the start-up's rollups; with one left
    out, the readings and the devices' hourly rollup. Both equal a count by hand."""
    pilot = simulated_pilot
    first = pilot.runs[0].organisations[STARTUP]["id"]
    start, end = rome(pilot.period.start), rome(pilot.period.end)  # whole hours
    recent = end - timedelta(days=7)
    latency_q = next(q for q in QUERIES if q.title.startswith("Latency by municipality"))
    by_type_q = next(q for q in QUERIES if q.title == "Readings stored by device type")
    with pilot.admin() as admin:
        rows = admin.execute(
            "SELECT r.device_id, d.device_type, r.at,"
            " extract(epoch FROM r.received_at - r.measured_at)::float8, e.municipality"
            " FROM readings r JOIN devices d USING (device_id)"
            " LEFT JOIN enrolments e ON e.device_id = r.device_id"
            "  AND ehl_pilot_day(r.measured_at) BETWEEN e.start_date"
            "  AND coalesce(e.end_date, 'infinity'::date)"
            " WHERE d.organisation_id = %s",
            (first,),
        ).fetchall()
        names: dict[str | None, str] = dict(
            admin.execute("SELECT istat_code, name FROM municipalities").fetchall()
        )
    with pilot.login("startup") as conn:
        variables = resolve_variables(conn, BOARD, start, end, timescaledb=pilot.timescaledb)
        fleet = list(variables["device"])
        with_readings = sorted({r[0] for r in rows})
        left_out = with_readings[0]
        selection = [d for d in fleet if d != left_out]
        results = {}
        for name, devices in (("fleet", fleet), ("selection", selection)):
            chosen = {**variables, "device": devices}
            results[name] = {
                q.title: run_panel(conn, q, start, end, chosen, timescaledb=pilot.timescaledb)
                for q in (latency_q, by_type_q)
            }
    assert len(fleet) > len(selection) > 0
    # the fleet's rollups keep whole hours: a bucket starting at `end` counts to its end
    fleet_rows = [r for r in rows if max(start, recent) <= r[2] < end + timedelta(hours=1)]
    chosen_rows = [r for r in rows if max(start, recent) <= r[2] <= end and r[0] != left_out]
    for name, subset in (("fleet", fleet_rows), ("selection", chosen_rows)):
        expected = _latency_by_hand([(r[4], r[3]) for r in subset], names)
        drawn = results[name][latency_q.title]
        got = {row[0]: (int(row[1]), row[2], row[3]) for row in drawn.rows}
        assert got.keys() == expected.keys(), name
        for municipality, (count, p50, p95) in expected.items():
            assert got[municipality][0] == count, (name, municipality)
            assert got[municipality][1:] == pytest.approx((p50, p95), abs=1e-6), name
    whole_hours = [r for r in rows if start <= r[2] < end + timedelta(hours=1)]
    for name, subset in (
        ("fleet", whole_hours),
        ("selection", [r for r in whole_hours if r[0] != left_out]),
    ):
        drawn = results[name][by_type_q.title]
        per_type: Counter[str] = Counter()
        for row in drawn.rows:
            per_type[row[1]] += int(row[2])
        assert per_type == Counter(r[1] for r in subset) != Counter(), name


def test_a_second_startup_never_sees_a_device_of_the_first(simulated_pilot: SimulatedPilot) -> None:
    pilot = simulated_pilot
    first = pilot.runs[0].organisations[STARTUP]["id"]
    second = pilot.runs[1].organisations[STARTUP]["id"]
    with pilot.admin() as admin:
        theirs, ours = (
            {
                d
                for (d,) in admin.execute(
                    "SELECT device_id FROM devices WHERE organisation_id = %s", (org,)
                )
            }
            for org in (first, second)
        )
    assert theirs and ours
    both = rome(date(2026, 2, 1)), rome(pilot.period.end)
    february = rome(date(2026, 2, 1)), rome(date(2026, 2, 8))
    with pilot.login(second) as conn:
        for start, end in (both, february):
            results = run_all(conn, start, end, timescaledb=pilot.timescaledb)
            seen = cells(results)
            assert not seen & theirs
            assert ours <= {row[0] for row in results["Devices"].rows}
    assert {row[0] for row in results["Conformance problems per device"].rows} <= ours
    assert results["Latency by municipality (measurement to storage)"].rows


# -- a store of our own, with the faults the contract names ----------------------------------

T0 = datetime(2026, 3, 10, 7, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=12)  # every fault within the conformance table's 24 hours
RANGE = rome(date(2026, 3, 9)), rome(date(2026, 3, 12))


def _payload(readings: list[dict[str, Any]], sent_at: datetime, msg_id: str) -> bytes:
    return orjson.dumps(
        {"schema": "ehl.readings/1", "msg_id": msg_id, "sent_at": sent_at.isoformat(),
         "readings": readings}
    )  # fmt: skip


def _reading(seq: int, metric: str, value: float, unit: str, at: datetime) -> dict[str, Any]:
    return {"seq": seq, "metric": metric, "value": value, "unit": unit, "at": at.isoformat()}


def _send(
    conn: psycopg.Connection,
    device_id: str,
    device_type: str,
    received_at: datetime,
    payload: bytes,
    *,
    qos: int = 1,
) -> None:
    message = ReceivedMessage(readings_topic(device_id), payload, qos, False, 1, received_at, True)
    judged = judge(message, lambda device: KnownDevice(device_type))
    store_judged(conn, ReadingWriter(conn), [judged], DEFAULT_RULES)
    conn.commit()


#: what the faulty device's messages must be refused for, by reason
FAULTY_REJECTS = {
    "out_of_range": 1,
    "unit_mismatch": 1,
    "unknown_metric": 1,
    "metric_not_for_device_type": 1,
    "malformed_json": 1,
    "conflicting_duplicate": 1,
    "timestamp_in_future": 1,
}


@dataclass
class FaultStore:
    form: str
    url: str
    roles: dict[str, RoleCredentials]
    devices: dict[str, set[str]]

    def login(self, name: str) -> psycopg.Connection:
        role = self.roles[name]
        return psycopg.connect(
            self.url, user=role.role_name, password=role.password, autocommit=True
        )


def _fill(conn: psycopg.Connection) -> dict[str, uuid.UUID]:
    orgs = {
        name: organisation_registry.create_organisation(conn, "startup", name).id
        for name in ("faulty", "other")
    }
    for device_id, org, device_type in (
        ("faulty-bpm-1", "faulty", "blood_pressure_monitor"),
        ("faulty-scale-1", "faulty", "weighing_scale"),
        ("other-bpm-1", "other", "blood_pressure_monitor"),
    ):
        device_registry.insert_device(
            conn, organisation_id=orgs[org], device_id=device_id, device_type=device_type,
            model="m", serial=device_id, firmware="1.0",
        )  # fmt: skip
    conn.commit()
    bpm, at = "blood_pressure_monitor", T0 - timedelta(minutes=1)
    good = [
        _reading(1, "bp_systolic", 130, "mm[Hg]", at),
        _reading(2, "bp_diastolic", 85, "mm[Hg]", at),
    ]
    _send(conn, "faulty-bpm-1", bpm, T0, _payload(good, T0, "m1"))
    bad = [
        _reading(3, "bp_systolic", 900, "mm[Hg]", T0),  # out_of_range
        _reading(4, "bp_diastolic", 80, "Cel", T0),  # unit_mismatch
        _reading(5, "coffee", 1, "1", T0),  # unknown_metric
        _reading(6, "body_weight", 70, "kg", T0),  # metric_not_for_device_type
        _reading(7, "heart_rate", 70, "/min", T0),
    ]
    sent = T0 + timedelta(hours=1)
    _send(conn, "faulty-bpm-1", bpm, sent, _payload(bad, sent, "m2"))
    _send(conn, "faulty-bpm-1", bpm, T1, b"{not json")
    resent = [
        _reading(1, "bp_systolic", 131, "mm[Hg]", at),  # conflicting_duplicate
        _reading(2, "bp_diastolic", 85, "mm[Hg]", at),  # a harmless duplicate
    ]
    sent = T1 + timedelta(hours=1)
    _send(conn, "faulty-bpm-1", bpm, sent, _payload(resent, sent, "m3"))
    late = T1 + timedelta(hours=2)  # the device's clock ten minutes slow, sent at QoS 0
    skewed = [_reading(8, "heart_rate", 71, "/min", late - timedelta(minutes=11))]
    _send(
        conn, "faulty-bpm-1", bpm, late, _payload(skewed, late - timedelta(minutes=10), "m4"),
        qos=0,
    )  # fmt: skip
    sent = late + timedelta(hours=1)
    future = [_reading(9, "heart_rate", 72, "/min", sent + timedelta(hours=1))]
    _send(conn, "faulty-bpm-1", bpm, sent, _payload(future, sent, "m5"))
    _send(conn, "other-bpm-1", bpm, T0, _payload([_reading(1, "heart_rate", 999, "/min", T0)],
                                                 T0, "o1"))  # fmt: skip
    _send(conn, "other-bpm-1", bpm, T1, b"[]")
    with conn.transaction():
        device_registry.record_status(
            conn, "faulty-bpm-1", None, retained=True, payload=b"up", received_at=T0
        )
    conn.commit()
    return orgs


@pytest.fixture(scope="module", params=["plain", "timescale"])
def fault_store(request: pytest.FixtureRequest) -> Iterator[FaultStore]:
    admin_url, name = migrated_store(request, request.param)
    url = with_database(admin_url, name)
    try:
        with psycopg.connect(url) as conn:
            orgs = _fill(conn)
        with psycopg.connect(url, autocommit=True) as conn:
            roles = {key: create_role(conn, org) for key, org in orgs.items()}
            devices = {
                key: {d for (d,) in conn.execute(
                    "SELECT device_id FROM devices WHERE organisation_id = %s", (org,))}
                for key, org in orgs.items()
            }  # fmt: skip
        yield FaultStore(request.param, url, roles, devices)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for role in list_roles(conn):
                revoke_role(conn, role.role_name)
        drop_database(admin_url, name)


def test_rejects_by_reason_equal_what_was_sent_and_a_count_by_hand(fault_store: FaultStore) -> None:
    with fault_store.login("faulty") as conn:
        results = run_all(conn, *RANGE, timescaledb=fault_store.form == "timescale")
    with psycopg.connect(fault_store.url) as admin:
        by_hand: dict[str, int] = dict(
            admin.execute(
                "SELECT reason, count(*) FROM rejected_readings"
                " WHERE device_id LIKE 'faulty-%' GROUP BY reason"
            ).fetchall()
        )
    assert by_hand == FAULTY_REJECTS
    series = results["Rejected readings by reason"]
    summed: Counter[str] = Counter()
    for _, reason, count in series.rows:
        summed[reason] += count
    assert summed == Counter(FAULTY_REJECTS)
    assert len({time for time, _, _ in series.rows}) >= 2  # 15 hours apart: two buckets at least
    table = {row[0]: row[1] for row in results["Rejection reasons"].rows}
    assert table == FAULTY_REJECTS


def test_conformance_problems_are_counted_per_device_by_kind(fault_store: FaultStore) -> None:
    """Over the last 24 hours of the range, as the conformance check judges by default: a
    range ending a day after the faults counts them all, one ending two days after none."""
    timescaledb = fault_store.form == "timescale"
    with fault_store.login("faulty") as conn:
        results = run_all(conn, RANGE[0], T0 + timedelta(hours=20), timescaledb=timescaledb)
        later = run_all(conn, RANGE[0], T0 + timedelta(hours=48), timescaledb=timescaledb)
    assert later["Conformance problems per device"].rows == []
    table = results["Conformance problems per device"]
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert set(rows) == {"faulty-bpm-1"}  # the scale sent nothing and had no problem
    faulty = rows["faulty-bpm-1"]
    assert {k: v for k, v in faulty.items() if k not in ("device", "type")} == {
        "messages": 6,  # the malformed one too: it is logged, refused whole
        "problems": 10,
        "refused: schema": 1,
        "refused: catalogue": 3,
        "refused: unit": 1,
        "dated in future": 1,
        "clock off > 120 s": 1,
        "QoS 0": 1,
        "conflicting resend": 1,
        "unreadable status": 1,
        "resent (harmless)": 1,
    }
    clocks = results["Clocks per device"]
    worst = clocks.columns.index("worst offset s")
    assert [round(row[worst]) for row in clocks.rows if row[0] == "faulty-bpm-1"] == [600]


def test_the_other_startup_sees_only_its_own_rejects(fault_store: FaultStore) -> None:
    with fault_store.login("other") as conn:
        results = run_all(conn, *RANGE, timescaledb=fault_store.form == "timescale")
    assert not cells(results) & fault_store.devices["faulty"]
    assert {row[0]: row[1] for row in results["Rejection reasons"].rows} == {
        "out_of_range": 1,
        "schema_violation": 1,
    }
