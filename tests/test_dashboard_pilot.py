"""The pilot dashboard (issue 11, item 4): its panels run as CMTo's role on the simulated pilot
and show `evaluate`'s own numbers for the same period, small groups without a value; and
`publish-evaluation` publishes the weeks its trend reads."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from pydantic import SecretStr

from ehealthlab.dashboards.panels import to_json_data
from ehealthlab.dashboards.pilot import HEADLINE, pilot_dashboard
from ehealthlab.dashboards.queries import PanelResult, panel_queries, resolve_variables, run_panel
from ehealthlab.evaluation.dataset import GROUPINGS, Period
from ehealthlab.evaluation.publish import publish_evaluations, whole_weeks
from ehealthlab.evaluation.registry import BY_ID, INDICATORS
from ehealthlab.evaluation.service import run_evaluation
from ehealthlab.settings import Settings
from ehealthlab.store.db import connect

ROME = ZoneInfo("Europe/Rome")
BALME = "001019"
#: the groupings a panel shows, by the panel's title (before its variable is filled in)
PANEL_GROUPING = {
    "Municipalities by $indicator": "municipality",
    "$indicator by SNAI class": "snai_class",
    "$indicator by mini-pilot": "mini_pilot",
}
TITLE = {i.id: i.title for i in INDICATORS}


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), ROME)


def same(shown: Any, expected: Any) -> bool:
    if expected is None or shown is None:
        return shown is None and expected is None
    return bool(shown == pytest.approx(float(expected), rel=1e-12, abs=1e-12))


def figures(value: Any) -> tuple[Any, Any, Any]:
    """(value, ci95 low, ci95 high) of one indicator of `evaluate`'s JSON."""
    if isinstance(value, dict):
        low, high = value.get("ci95") or (None, None)
        return value.get("value"), low, high
    return value, None, None


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return to_json_data(pilot_dashboard())


@pytest.fixture(scope="module")
def owner_settings(simulated_pilot, tmp_path_factory) -> Settings:
    """The defaults `publish_evaluations` ran with in the fixture (seed, small groups)."""
    return Settings(
        state_dir=tmp_path_factory.mktemp("evaluate"),
        database_url=SecretStr(simulated_pilot.url),
    )


@pytest.fixture(scope="module")
def evaluated(simulated_pilot, owner_settings) -> dict[str, dict[str, Any]]:
    """`ehealthlab evaluate`'s documents for the pilot's week, each grouping, as the owner."""
    with psycopg.connect(simulated_pilot.url) as conn:
        return {
            grouping: run_evaluation(
                conn, owner_settings, simulated_pilot.period, grouping, "simulated"
            )
            for grouping in ("all", "municipality", "area", "snai_class", "mini_pilot")
        }


@pytest.fixture(scope="module")
def show(simulated_pilot, board):
    """Runs every panel as the lab role, as Grafana would for the pilot's week and one
    indicator: title -> result."""
    period = simulated_pilot.period
    start, end = midnight(period.start), midnight(period.end)

    def shown(indicator: str) -> dict[str, PanelResult]:
        with simulated_pilot.login("lab") as conn:
            variables = resolve_variables(
                conn, board, start, end, timescaledb=simulated_pilot.timescaledb,
                chosen={"indicator": indicator},
            )  # fmt: skip
            assert variables["population"] == "simulated"
            assert variables["period"] == f"{period.start}/{period.end}"
            return {
                query.title: run_panel(
                    conn, query, start, end, variables, timescaledb=simulated_pilot.timescaledb
                )
                for query in panel_queries(board)
            }

    return shown


def test_every_panel_returns_rows_as_the_lab_role(show, board, evaluated):
    results = show("adherence")
    assert len(results) == len(panel_queries(board)) == 7
    assert evaluated["mini_pilot"]["groups"], "the fixture's mini-pilot was not evaluated"
    for title, result in results.items():
        assert result.rows, f"{title}: no rows"
    assert {p["type"] for p in board["panels"]} == {"stat", "table", "geomap", "timeseries"}


def test_the_map_is_grafanas_geomap_of_the_municipalities(board):
    (panel,) = [p for p in board["panels"] if p["type"] == "geomap"]
    view = panel["options"]["view"]
    assert (view["lat"], view["lon"], view["zoom"]) == (45.07, 7.69, 8)
    (layer,) = panel["options"]["layers"]
    assert layer["type"] == "markers"
    assert layer["location"] == {"mode": "coords", "latitude": "latitude", "longitude": "longitude"}
    assert layer["config"]["style"]["color"]["field"] == "value"
    assert panel["datasource"]["uid"] == "ehl-lab" and panel["targets"][0]["rawSql"]


def test_headline_numbers_are_evaluates(show, evaluated):
    everyone = evaluated["all"]["all"]
    results = show("adherence")
    table = results["Indicators of all patients, with 95% bootstrap intervals"]
    shown = {row[0]: row for row in table.rows}
    assert set(shown) == {TITLE[key] for key in everyone}
    for key, value in everyone.items():
        _, unit, *numbers = shown[TITLE[key]]
        assert unit == BY_ID[key].unit
        for got, expected in zip(numbers, figures(value), strict=True):
            assert same(got, expected), (key, numbers, value)
    (stat,) = results["Headline"].rows
    assert results["Headline"].columns == tuple(TITLE[key] for key in HEADLINE)
    for got, key in zip(stat, HEADLINE, strict=True):
        assert same(got, figures(everyone[key])[0]), key
    assert stat[0] == everyone["patients_enrolled"] > 0


@pytest.mark.parametrize("indicator", [i.id for i in INDICATORS])
def test_every_group_shows_evaluates_number_or_none(show, evaluated, indicator):
    results = show(indicator)
    for title, grouping in PANEL_GROUPING.items():
        document = evaluated[grouping]
        result = results[title]
        rows = {row[0]: dict(zip(result.columns, row, strict=True)) for row in result.rows}
        assert set(rows) == set(document["groups"]), title
        for key, values in document["groups"].items():
            row = rows[key]
            assert row["label"] == document["labels"][key]
            patients = values["patients_enrolled"]
            expected: tuple[Any, ...] = figures(values.get(indicator))
            if patients < document["min_group_patients"]:
                assert (row["patients"], row["status"]) == ("< 5", "suppressed"), key
                expected = (None, None, None)
            else:
                assert (row["patients"], row["status"]) == (str(patients), ""), key
            shown = (row["value"], row["value ci95 low"], row["value ci95 high"])
            for got, want in zip(shown, expected, strict=True):
                assert same(got, want), (title, key, shown, expected)


@pytest.mark.parametrize("indicator", ["adherence", "loss_rate", "completeness", "late_share"])
def test_inner_areas_against_centres_are_evaluates(show, evaluated, indicator):
    document = evaluated["area"]
    rows = {row[0]: row for row in show(indicator)["Inner areas against centres"].rows}
    assert len(rows) == len(INDICATORS)
    _, _, *numbers = rows[TITLE[indicator]]
    expected: list[Any] = []
    for side in ("centre", "inner"):
        values = document["groups"].get(side)
        small = values is None or values["patients_enrolled"] < document["min_group_patients"]
        expected += [None, None, None] if small else figures(values[indicator])
    assert any(v is not None for v in expected), "the week has no publishable area"
    for got, want in zip(numbers, expected, strict=True):
        assert same(got, want), (numbers, expected)


def test_balme_is_suppressed_everywhere_it_is_shown(show, evaluated):
    """The fixture's Balme has too few patients: its document keeps every value, the map
    shows its name and band only."""
    balme = evaluated["municipality"]["groups"][BALME]
    assert 0 < balme["patients_enrolled"] < evaluated["municipality"]["min_group_patients"]
    for indicator in ("adherence", "loss_rate", "patient_days"):
        assert figures(balme[indicator])[0] is not None  # there is a number to hide
        result = show(indicator)["Municipalities by $indicator"]
        (row,) = [r for r in result.rows if r[0] == BALME]
        shown = dict(zip(result.columns, row, strict=True))
        assert shown["label"] == "Balme" and shown["patients"] == "< 5"
        assert shown["latitude"] is not None and shown["longitude"] is not None
        assert (shown["value"], shown["value ci95 low"], shown["value ci95 high"]) == (None,) * 3


@pytest.mark.parametrize("indicator", ["adherence", "loss_rate", "patients_enrolled"])
def test_one_trend_point_per_whole_week_as_evaluate_gives_it(
    simulated_pilot, show, owner_settings, indicator
):
    weeks = list(whole_weeks(simulated_pilot.period))
    assert weeks, "the fixture's period holds a whole week"
    result = show(indicator)["$indicator by week"]
    assert result.columns == ("time", indicator, f"{indicator} ci95 low", f"{indicator} ci95 high")
    assert [row[0] for row in result.rows] == [midnight(w.start) for w in weeks]
    with psycopg.connect(simulated_pilot.url) as conn:
        for week, (_, *numbers) in zip(weeks, result.rows, strict=True):
            document = run_evaluation(conn, owner_settings, week, "all", "simulated")
            for got, want in zip(numbers, figures(document["all"][indicator]), strict=True):
                assert same(got, want), (week, numbers)


# -- publish-evaluation's weeks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "mondays"),
    [
        (date(2026, 3, 9), date(2026, 3, 16), [date(2026, 3, 9)]),
        (date(2026, 3, 4), date(2026, 3, 25), [date(2026, 3, 9), date(2026, 3, 16)]),
        (date(2026, 3, 10), date(2026, 3, 16), []),
        (date(2026, 3, 22), date(2026, 4, 6), [date(2026, 3, 23), date(2026, 3, 30)]),  # DST
    ],
)
def test_whole_weeks_run_monday_to_monday_inside_the_period(start, end, mondays):
    weeks = list(whole_weeks(Period(start, end)))
    assert weeks == [Period(m, m + timedelta(days=7)) for m in mondays]


def test_publishing_adds_each_whole_week_of_all_patients(database_url, tmp_path):
    settings = Settings(state_dir=tmp_path, database_url=SecretStr(database_url))
    period = Period(date(2026, 3, 4), date(2026, 3, 25))
    now = datetime(2026, 3, 25, 3, tzinfo=UTC)
    with connect(settings) as conn:
        conn.execute("DELETE FROM evaluations")
        conn.commit()
        saved = publish_evaluations(conn, settings, period, "simulated", now=now)
        conn.commit()
        rows = conn.execute(
            "SELECT id, grouping, period_from, period_to, document FROM evaluations"
            " ORDER BY period_from, grouping"
        ).fetchall()
        weeks = list(whole_weeks(period))
        assert sorted(saved) == sorted([*GROUPINGS, "all/2026-03-09", "all/2026-03-16"])
        assert {r[0] for r in rows} == set(saved.values())
        weekly = [(r[2], r[3], r[4]) for r in rows if r[1] == "all" and r[2] != period.start]
        assert [Period(start, end) for start, end, _ in weekly] == weeks
        for week, (_, _, document) in zip(weeks, weekly, strict=True):
            conn.commit()
            assert document == run_evaluation(conn, settings, week, "all", "simulated", now=now)
        conn.execute("DELETE FROM evaluations")
        conn.commit()
        one_week = Period(date(2026, 3, 9), date(2026, 3, 16))
        assert sorted(publish_evaluations(conn, settings, one_week, "simulated")) == sorted(
            GROUPINGS
        )  # the week that is the period is its `all`, not a second row
        conn.commit()
