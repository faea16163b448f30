"""The provider dashboard run as Grafana runs it, as the provider's own role, on the store the
simulator filled: every panel answers, the alert table and the vitals agree with the store
counted by hand, the thresholds drawn are the ingest's rules, and a second provider's role
never sees a patient of the first."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, time, timedelta
from typing import Any

import pytest

from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.dashboards.panels import datasource_uid, to_json_data
from ehealthlab.dashboards.provider import (
    LAST_READING_WITHIN,
    WEIGHT_LIMIT_FIELD,
    provider_dashboard,
)
from ehealthlab.dashboards.queries import (
    PanelQuery,
    PanelResult,
    panel_queries,
    resolve_variables,
    run_panel,
)
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules, ThresholdRule, WeightGainRule

BOARD = to_json_data(provider_dashboard())
PATIENTS_PANEL = "Patients: open alerts first"
VITALS_PANEL = "Vitals: ${patient:text}"
ALL_PANELS = {
    PATIENTS_PANEL,
    VITALS_PANEL,
    "Adherence, last 30 days",
    "Last reading and device status",
    "Data",  # simulated or real: the banner (tests/test_dashboards.py)
}


def _week(pilot: Any) -> tuple[datetime, datetime]:
    """Seven days ending at the demo week's end (midnight in the pilot's zone)."""
    end = datetime.combine(pilot.period.end, time(), PILOT_ZONE)
    return end - timedelta(days=7), end


def _by_panel(board: dict[str, Any]) -> dict[str, list[PanelQuery]]:
    panels: dict[str, list[PanelQuery]] = defaultdict(list)
    for query in panel_queries(board):
        panels[query.title].append(query)
    return dict(panels)


def _run_all(
    conn: Any, pilot: Any, board: dict[str, Any], start: datetime, end: datetime, **chosen: str
) -> dict[str, list[PanelResult]]:
    variables = resolve_variables(
        conn, board, start, end, timescaledb=pilot.timescaledb, chosen=chosen or None
    )
    return {
        title: [
            run_panel(conn, q, start, end, variables, timescaledb=pilot.timescaledb)
            for q in queries
        ]
        for title, queries in _by_panel(board).items()
    }


def _records(result: PanelResult) -> list[dict[str, Any]]:
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def _provider_ids(pilot: Any) -> list[str]:
    """The providers' organisation ids: the demo week's, then the small pilot's."""
    found = []
    with pilot.admin() as conn:
        for run in pilot.runs:
            ids = [o["id"] for o in run.organisations.values()]
            row = conn.execute(
                "SELECT id::text FROM organisations"
                " WHERE id = ANY(%s::uuid[]) AND kind = 'provider'",
                (ids,),
            ).fetchone()
            assert row is not None
            found.append(str(row[0]))
    return found


def _patients_of(pilot: Any, organisation_id: str) -> set[uuid.UUID]:
    with pilot.admin() as conn:
        rows = conn.execute(
            "SELECT id FROM patients WHERE organisation_id = %s", (organisation_id,)
        ).fetchall()
    return {row[0] for row in rows}


def _patient_ids(results: Iterable[PanelResult]) -> set[uuid.UUID]:
    return {
        row[result.columns.index("patient_id")]
        for result in results
        if "patient_id" in result.columns
        for row in result.rows
    }


def test_the_board_is_the_providers() -> None:
    assert BOARD["uid"] == "ehl-provider"
    assert set(_by_panel(BOARD)) == ALL_PANELS
    for panel in BOARD["panels"]:
        assert panel["datasource"]["uid"] == datasource_uid("provider")
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid("provider")
    (variable,) = BOARD["templating"]["list"]
    assert variable["name"] == "patient"


def test_every_panel_returns_rows_as_the_provider(simulated_pilot: Any) -> None:
    start, end = _week(simulated_pilot)
    with simulated_pilot.login("provider") as conn:
        results = _run_all(conn, simulated_pilot, BOARD, start, end)
    assert set(results) == ALL_PANELS
    for title, panel_results in results.items():
        assert sum(len(r.rows) for r in panel_results) > 0, title
        if panel_results[0].query.panel_type == "table":  # its links need the patient's id
            assert "patient_id" in panel_results[0].columns, title


def test_patients_with_open_alerts_come_first_with_their_counts(simulated_pilot: Any) -> None:
    first, _ = _provider_ids(simulated_pilot)
    start, end = _week(simulated_pilot)
    (query,) = _by_panel(BOARD)[PATIENTS_PANEL]
    with simulated_pilot.login("provider") as conn:
        variables = resolve_variables(
            conn, BOARD, start, end, timescaledb=simulated_pilot.timescaledb
        )
        rows = _records(
            run_panel(conn, query, start, end, variables, timescaledb=simulated_pilot.timescaledb)
        )
    with simulated_pilot.admin() as conn:
        by_hand = dict(
            conn.execute(
                "SELECT a.patient_id, count(*) FROM alerts a JOIN patients p ON p.id = a.patient_id"
                " WHERE p.organisation_id = %s AND a.acknowledged_at IS NULL GROUP BY 1",
                (first,),
            ).fetchall()
        )
    assert by_hand, "the demo week raises alerts"
    counts = [row["open_alerts"] for row in rows]
    assert counts == sorted(counts, reverse=True)
    assert 0 < counts.count(0) < len(counts), "patients without open alerts follow"
    assert {r["patient_id"]: r["open_alerts"] for r in rows if r["open_alerts"]} == by_hand


def test_vitals_are_exactly_the_chosen_patients_readings(simulated_pilot: Any) -> None:
    first, _ = _provider_ids(simulated_pilot)
    start, end = _week(simulated_pilot)
    readings_sql = (
        "SELECT r.metric, r.measured_at, r.value FROM readings r WHERE r.patient_id = %s"
        " AND r.measured_at BETWEEN %s AND %s"
    )
    with simulated_pilot.admin() as conn:
        # the patients measuring the most metrics, a weight among them
        chosen = [
            row[0]
            for row in conn.execute(
                "SELECT r.patient_id FROM readings r JOIN patients p ON p.id = r.patient_id"
                " WHERE p.organisation_id = %s GROUP BY 1"
                " ORDER BY count(DISTINCT r.metric) DESC, 1 LIMIT 2",
                (first,),
            ).fetchall()
        ]
        by_hand = {p: set(conn.execute(readings_sql, (p, start, end)).fetchall()) for p in chosen}
    queries = [q for q in _by_panel(BOARD)[VITALS_PANEL]]
    with simulated_pilot.login("provider") as conn:
        for patient in chosen:
            shown = set()
            for query in queries:
                result = run_panel(
                    conn,
                    query,
                    start,
                    end,
                    {"patient": str(patient)},
                    timescaledb=simulated_pilot.timescaledb,
                )
                _, metric = result.columns
                if metric != WEIGHT_LIMIT_FIELD:
                    shown |= {(metric, at, value) for at, value in result.rows}
            assert shown == by_hand[patient]
            assert len({metric for metric, _, _ in shown}) >= 3


@pytest.mark.parametrize(
    "rules",
    [DEFAULT_RULES, AlertRules((), WeightGainRule(gain_kg=0.5, window=timedelta(hours=30)))],
    ids=["default", "tighter"],
)
def test_weight_gain_limit_is_the_rules_window(simulated_pilot: Any, rules: AlertRules) -> None:
    """At each weight, the limit drawn is the lowest weight of the rule's window before it
    plus the rule's gain, counted here from the patient's weights."""
    first, _ = _provider_ids(simulated_pilot)
    start, end = _week(simulated_pilot)
    board = to_json_data(provider_dashboard(rules))
    (limit_query,) = [q for q in _by_panel(board)[VITALS_PANEL] if WEIGHT_LIMIT_FIELD in q.raw_sql]
    with simulated_pilot.admin() as conn:
        weights = conn.execute(
            "SELECT r.patient_id, r.measured_at, r.value FROM readings r"
            " JOIN patients p ON p.id = r.patient_id"
            " WHERE p.organisation_id = %s AND r.metric = 'body_weight'",
            (first,),
        ).fetchall()
    by_patient: dict[uuid.UUID, list[tuple[datetime, float]]] = defaultdict(list)
    for patient, at, value in weights:
        by_patient[patient].append((at, value))
    gain = rules.weight_gain
    checked = 0
    with simulated_pilot.login("provider") as conn:
        for patient, series in sorted(by_patient.items()):
            expected = []
            for at, _ in sorted(series):
                earlier = [v for t, v in series if at - gain.window <= t < at]
                if start <= at <= end and earlier:
                    expected.append((at, min(earlier) + gain.gain_kg))
            result = run_panel(
                conn,
                limit_query,
                start,
                end,
                {"patient": str(patient)},
                timescaledb=simulated_pilot.timescaledb,
            )
            assert result.rows == [(at, pytest.approx(limit)) for at, limit in expected]
            checked += len(expected)
    assert checked > 0


def _band_colour(steps: list[dict[str, Any]], value: float) -> str:
    colour = steps[0]["color"]
    for step in steps[1:]:
        if step["value"] <= value:
            colour = step["color"]
    return str(colour)


@pytest.mark.parametrize(
    "rules",
    [
        DEFAULT_RULES,
        AlertRules(
            (
                ThresholdRule("fever", "body_temperature", ">=", 37.5),
                ThresholdRule("spo2_low", "spo2", "<=", 92),
            ),
            WeightGainRule(),
        ),
    ],
    ids=["default", "rules-file"],
)
def test_thresholds_drawn_are_the_ingest_rules(rules: AlertRules) -> None:
    board = to_json_data(provider_dashboard(rules))
    (vitals,) = [p for p in board["panels"] if p["title"] == VITALS_PANEL]
    defaults = vitals["fieldConfig"]["defaults"]
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "off"
    drawn: set[tuple[str, float]] = set()
    steps_of: dict[str, list[dict[str, Any]]] = {}
    for override in vitals["fieldConfig"]["overrides"]:
        properties = {p["id"]: p["value"] for p in override["properties"]}
        if "thresholds" not in properties:
            continue
        metric = override["matcher"]["options"]
        assert properties["custom.thresholdsStyle"] == {"mode": "line"}
        steps_of[metric] = properties["thresholds"]["steps"]
        drawn |= {(metric, s["value"]) for s in steps_of[metric] if s["value"] is not None}
    assert drawn == {(r.metric, r.threshold) for r in rules.thresholds}
    for rule in rules.thresholds:  # the breaching side of each line is red
        beyond = rule.threshold + (1 if rule.op == ">=" else -1)
        inside = rule.threshold + (-1 if rule.op == ">=" else 1)
        assert _band_colour(steps_of[rule.metric], beyond) == "red"
        assert _band_colour(steps_of[rule.metric], inside) == "green"


def test_second_provider_never_sees_the_firsts_patients(simulated_pilot: Any) -> None:
    first, second = _provider_ids(simulated_pilot)
    firsts = _patients_of(simulated_pilot, first)
    seconds = _patients_of(simulated_pilot, second)
    assert firsts and seconds and not firsts & seconds
    week = _week(simulated_pilot)
    own_start = datetime(2026, 2, 2, tzinfo=PILOT_ZONE)  # the small pilot's four days
    with simulated_pilot.login(second) as conn:
        own = _run_all(conn, simulated_pilot, BOARD, own_start, own_start + timedelta(days=7))
        on_week = _run_all(conn, simulated_pilot, BOARD, *week)
        # even when its patient variable names the first provider's patient
        forced = _run_all(conn, simulated_pilot, BOARD, *week, patient=str(min(firsts)))
    seen = set()
    for results in (own, on_week, forced):
        seen |= _patient_ids(r for rs in results.values() for r in rs)
    assert seen and seen <= seconds
    assert all(not r.rows for r in forced[VITALS_PANEL])
    assert sum(len(r.rows) for r in own[VITALS_PANEL]) > 0


def test_patient_links_lead_to_the_fhir_record() -> None:
    from ehealthlab.fhir.rest.router import router  # noqa: PLC0415  # only this test needs it

    paths = {getattr(route, "path", "") for route in router.routes}
    assert {"/fhir/Patient/{resource_id:fhirid}", "/fhir/Observation"} <= paths
    for panel in BOARD["panels"]:
        if panel["type"] != "table":
            continue
        links = [
            link["url"]
            for override in panel["fieldConfig"]["overrides"]
            for prop in override["properties"]
            if prop["id"] == "links"
            for link in prop["value"]
        ]
        assert "/fhir/Patient/${__data.fields.patient_id}" in links, panel["title"]
        assert any(
            u.startswith("/fhir/Observation?patient=${__data.fields.patient_id}") for u in links
        )


def test_adherence_expects_what_the_care_plans_ask(simulated_pilot: Any) -> None:
    """Enrolled days and expected readings of the last 30 complete days, from the enrolments
    counted here; taken readings never exceed the plan."""
    first, _ = _provider_ids(simulated_pilot)
    start, end = _week(simulated_pilot)
    last = (end - timedelta(microseconds=1)).date()
    (query,) = _by_panel(BOARD)["Adherence, last 30 days"]
    with simulated_pilot.admin() as conn:
        enrolments = conn.execute(
            "SELECT e.patient_id, e.start_date, e.end_date, e.care_plan FROM enrolments e"
            " JOIN patients p ON p.id = e.patient_id WHERE p.organisation_id = %s",
            (first,),
        ).fetchall()
    days: dict[uuid.UUID, set[Any]] = defaultdict(set)
    expected: dict[uuid.UUID, int] = defaultdict(int)
    for patient, begin, finish, plan in enrolments:
        for n in range(30):
            day = last - timedelta(days=n)
            if begin <= day and (finish is None or day <= finish):
                days[patient].add(day)
                expected[patient] += sum(plan.values())
    with simulated_pilot.login("provider") as conn:
        rows = _records(
            run_panel(conn, query, start, end, {}, timescaledb=simulated_pilot.timescaledb)
        )
    assert {r["patient_id"]: r["enrolled_days"] for r in rows} == {
        p: len(d) for p, d in days.items()
    }
    assert {r["patient_id"]: r["readings_expected"] for r in rows} == expected
    for row in rows:
        assert 0 <= row["adherent_days"] <= row["enrolled_days"]
        assert 0 < row["readings_taken"] <= row["readings_expected"]
    assert [r["adherence"] for r in rows] == sorted(r["adherence"] for r in rows)


def test_last_reading_is_the_last_in_the_look_back(simulated_pilot: Any) -> None:
    """Each enrolment's last reading is the latest its device brought for its patient in the
    LAST_READING_WITHIN before the range's end, counted here; none there leaves it empty. The
    patient table's last reading is the patient's latest there."""
    first, _ = _provider_ids(simulated_pilot)
    start, end = _week(simulated_pilot)
    (query,) = _by_panel(BOARD)["Last reading and device status"]
    (patients_query,) = _by_panel(BOARD)[PATIENTS_PANEL]
    with simulated_pilot.admin() as conn:
        by_hand = dict(
            conn.execute(
                "SELECT (r.patient_id, r.device_id), max(r.measured_at) FROM readings r"
                " JOIN patients p ON p.id = r.patient_id WHERE p.organisation_id = %s"
                " AND r.measured_at <= %s AND r.measured_at > %s::timestamptz - %s::interval"
                " GROUP BY r.patient_id, r.device_id",
                (first, end, end, LAST_READING_WITHIN),
            ).fetchall()
        )
        gone_quiet = conn.execute(
            "SELECT count(*) FROM readings r JOIN patients p ON p.id = r.patient_id"
            " WHERE p.organisation_id = %s AND r.measured_at <= %s::timestamptz - %s::interval",
            (first, end, LAST_READING_WITHIN),
        ).fetchone()
    with simulated_pilot.login("provider") as conn:
        rows = _records(
            run_panel(conn, query, start, end, {}, timescaledb=simulated_pilot.timescaledb)
        )
        patients = _records(
            run_panel(conn, patients_query, start, end, {}, timescaledb=simulated_pilot.timescaledb)
        )
    assert rows and by_hand and gone_quiet and gone_quiet[0] > 0
    last = {(str(p), d): t for (p, d), t in by_hand.items()}
    assert any(row["last_reading"] for row in rows)
    for row in rows:
        key = (str(row["patient_id"]), row["device_id"])
        assert row["last_reading"] == last.get(key), key
    per_patient: dict[str, Any] = {}
    for (patient, _device), at in last.items():
        per_patient[patient] = max(at, per_patient.get(patient, at))
    assert any(row["last_reading"] for row in patients)
    for row in patients:
        assert row["last_reading"] == per_patient.get(str(row["patient_id"])), row["patient"]
