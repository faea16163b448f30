"""Alert-threshold replay: ingest's rule code over a past period, with other thresholds.

Pure tests build ReplayData by hand; the end-to-end test lets ingest's own `store_judged`
fill a real store (and its alerts table), then replays the current rules over it and finds
exactly the alerts ingest stored.
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import psycopg
import pytest
from api_fixtures import template_copy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehealthlab.cli import OneLineParser
from ehealthlab.contract.pilot_time import day_start, pilot_day
from ehealthlab.errors import ConfigurationError, EhealthlabError, InvalidInputError
from ehealthlab.evaluation.replay import (
    MetricReadings,
    Period,
    ReplayData,
    StoredAlerts,
    enrolled_days,
    pilot_days,
    replay,
    to_us,
)
from ehealthlab.evaluation.replay_command import register
from ehealthlab.evaluation.replay_fetch import fetch_replay_data
from ehealthlab.evaluation.replay_plan import build_plan, load_plan, plan_of
from ehealthlab.ingest.alerts import (
    DEFAULT_RULES,
    AlertRules,
    ThresholdRule,
    WeightGainRule,
    alert_candidates,
)
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.settings import Settings
from ehealthlab.store.readings import AttributedRow, ReadingWriter

# the period holds the spring daylight-saving change (Sunday 29 March 2026, 02:00 → 03:00)
PERIOD = Period(date(2026, 3, 28), date(2026, 4, 2))
START = day_start(PERIOD.start)  # 2026-03-27T23:00Z


def data_of(
    readings: Sequence[tuple[int, str, float, datetime]],
    *,
    period: Period = PERIOD,
    patients: int = 3,
    stored: dict[str, StoredAlerts] | None = None,
    group: Sequence[int] | None = None,
    groups: tuple[str, ...] = (),
) -> ReplayData:
    """ReplayData of (patient, metric, value, measured_at) readings, every patient enrolled
    for the whole period."""
    by_metric: dict[str, list[tuple[int, float, int]]] = {}
    for patient, metric, value, measured in readings:
        by_metric.setdefault(metric, []).append((patient, value, to_us(measured)))
    return ReplayData(
        period=period,
        population="real",
        patients=patients,
        patient_days=np.full(patients, period.days, dtype=np.int64),
        readings={
            metric: MetricReadings(
                np.array([r[0] for r in rows], dtype=np.int64),
                np.array([r[1] for r in rows], dtype=np.float64),
                np.array([r[2] for r in rows], dtype=np.int64),
            )
            for metric, rows in by_metric.items()
        },
        stored=stored or {},
        by="area" if groups else None,
        groups=groups,
        group=None if group is None else np.array(group, dtype=np.int64),
    )


def only(rule: ThresholdRule | WeightGainRule) -> AlertRules:
    """Rules where `rule` replaces the current rule of its id."""
    if isinstance(rule, WeightGainRule):
        return AlertRules(DEFAULT_RULES.thresholds, rule)
    thresholds = tuple(rule if r.rule_id == rule.rule_id else r for r in DEFAULT_RULES.thresholds)
    return AlertRules(thresholds, DEFAULT_RULES.weight_gain)


def counted(data: ReplayData, rules: AlertRules = DEFAULT_RULES) -> dict[str, tuple[int, int]]:
    """Per current rule: (alerts, patients flagged)."""
    result = replay(data, plan_of(rules))
    return {r.setting.rule_id: (r.all.alerts, r.all.patients_flagged) for r in result.results}


NOON = START + timedelta(hours=12)


# -- thresholds at their limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "rules"),
    [
        ("bp_systolic", 180, ["bp_systolic_high"]),
        ("bp_systolic", 179.9, []),
        ("bp_systolic", 90, ["bp_systolic_low"]),
        ("bp_systolic", 90.1, []),
        ("bp_diastolic", 110, ["bp_diastolic_high"]),
        ("bp_diastolic", 109.9, []),
        ("heart_rate", 120, ["heart_rate_high"]),
        ("heart_rate", 119.9, []),
        ("heart_rate", 40, ["heart_rate_low"]),
        ("heart_rate", 40.1, []),
        ("spo2", 90, ["spo2_low"]),
        ("spo2", 90.1, []),
        ("body_temperature", 38.0, ["fever"]),
        ("body_temperature", 37.99, []),
        ("blood_glucose", 70, ["glucose_low"]),
        ("blood_glucose", 70.1, []),
        ("blood_glucose", 300, ["glucose_high"]),
        ("blood_glucose", 299.9, []),
        ("steps", 100_000, []),
    ],
)
def test_thresholds_at_and_around_their_limits_as_ingest(metric, value, rules):
    got = counted(data_of([(0, metric, value, NOON)]))
    assert [rule for rule, (alerts, _) in got.items() if alerts] == rules
    # ingest's own code on the same reading says the same
    row = AttributedRow(uuid.UUID(int=0), "d", metric, NOON, float(value), NOON, NOON)
    assert [c.rule_id for c in alert_candidates([row], {})] == rules


def test_one_alert_per_patient_rule_and_day():
    day = timedelta(days=1)
    data = data_of([
        (0, "bp_systolic", 185, NOON),
        (0, "bp_systolic", 200, NOON + timedelta(hours=3)),  # same day: the same alert
        (0, "bp_systolic", 181, NOON + day),  # next day: another
        (1, "bp_systolic", 190, NOON),  # another patient: another
        (1, "bp_systolic", 150, NOON + day),
        (2, "spo2", 85, NOON),  # another rule
    ])  # fmt: skip
    got = counted(data)
    assert got["bp_systolic_high"] == (3, 2)
    assert got["spo2_low"] == (1, 1)
    assert got["bp_diastolic_high"] == (0, 0)


# -- days: midnight in Europe/Rome, across the daylight-saving changes ------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("measured", "day"),
    [
        (utc(2026, 3, 27, 22, 59, 59, 999_999), None),  # 23:59:59.999999 on 27 March: before
        (utc(2026, 3, 27, 23, 0), date(2026, 3, 28)),  # midnight (CET): the first day
        (utc(2026, 3, 28, 22, 59, 59, 999_999), date(2026, 3, 28)),
        (utc(2026, 3, 28, 23, 0), date(2026, 3, 29)),  # the 23-hour day begins
        (utc(2026, 3, 29, 0, 59, 59), date(2026, 3, 29)),  # 01:59:59 CET
        (utc(2026, 3, 29, 1, 0), date(2026, 3, 29)),  # 03:00 CEST
        (utc(2026, 3, 29, 21, 59, 59, 999_999), date(2026, 3, 29)),  # 23:59:59.999999 CEST
        (utc(2026, 3, 29, 22, 0), date(2026, 3, 30)),  # midnight (CEST)
        (utc(2026, 4, 1, 21, 59, 59), date(2026, 4, 1)),  # the last day
        (utc(2026, 4, 1, 22, 0), None),  # `to` is excluded
    ],
)
def test_an_alert_belongs_to_the_europe_rome_day_of_its_reading(measured, day):
    data = data_of([(0, "spo2", 85, measured)])
    result = replay(data, plan_of(DEFAULT_RULES))
    [spo2] = [r for r in result.results if r.setting.rule_id == "spo2_low"]
    assert spo2.all.alerts == (0 if day is None else 1)
    if day is not None:  # the stored alert of that day is the one the replay finds
        stored = {"spo2_low": StoredAlerts(np.array([0]), np.array([(day - PERIOD.start).days]))}
        again = data_of([(0, "spo2", 85, measured)], stored=stored)
        assert replay(again, plan_of(DEFAULT_RULES)).agrees


@given(st.integers(-3 * 86_400, 6 * 86_400), st.sampled_from([(2026, 3, 27), (2026, 10, 23)]))
def test_pilot_days_agree_with_the_contracts_pilot_day_around_both_changes(seconds, start):
    first = date(*start)
    moments = [day_start(first) + timedelta(seconds=seconds + k) for k in (-1, 0, 1)]
    days = pilot_days(np.array([to_us(m) for m in moments], dtype=np.int64), first)
    assert list(days) == [(pilot_day(m) - first).days for m in moments]


def test_the_autumn_change_makes_a_25_hour_day():
    period = Period(date(2026, 10, 24), date(2026, 10, 27))
    # 25 October 2026 runs from 24 Oct 22:00 UTC (CEST) to 25 Oct 23:00 UTC (CET)
    readings = [
        (0, "heart_rate", 130, utc(2026, 10, 24, 21, 59, 59)),  # 24 Oct
        (0, "heart_rate", 130, utc(2026, 10, 24, 22, 0)),  # 25 Oct, 00:00 CEST
        (0, "heart_rate", 130, utc(2026, 10, 25, 22, 59, 59)),  # 25 Oct, 23:59:59 CET
        (0, "heart_rate", 130, utc(2026, 10, 25, 23, 0)),  # 26 Oct
    ]
    assert counted(data_of(readings, period=period))["heart_rate_high"] == (3, 1)


# -- weight gain ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "value", "alerts"),
    [
        # the lowest weight of the preceding 72 h is before the period: it still counts
        ([(-timedelta(hours=30), 70.0)], 72.0, 1),
        ([(-timedelta(hours=72), 70.0)], 72.0, 1),  # the window includes 72 h exactly
        ([(-timedelta(hours=72, microseconds=1), 70.0)], 72.0, 0),  # just outside
        ([(-timedelta(hours=30), 70.0)], 71.99, 0),
        ([(timedelta(0), 70.0)], 73.0, 0),  # the same instant does not precede
        ([(-timedelta(hours=30), 70.0), (-timedelta(hours=2), 73.0)], 72.5, 1),  # the lowest
        ([], 90.0, 0),
    ],
)
def test_weight_gain_across_the_period_start(history, value, alerts):
    measured = START + timedelta(hours=6)  # the period's first day, 06:00
    readings = [(0, "body_weight", kg, measured + offset) for offset, kg in history]
    readings.append((0, "body_weight", value, measured))
    assert counted(data_of(readings))["weight_gain"] == (alerts, alerts)


def test_weights_before_the_period_are_history_only():
    before = START - timedelta(hours=5)
    readings = [
        (0, "body_weight", 70.0, before - timedelta(hours=24)),
        (0, "body_weight", 75.0, before),  # a gain, but on the day before the period
    ]
    assert counted(data_of(readings))["weight_gain"] == (0, 0)


# -- the same decisions as ingest's own code --------------------------------------------------

METRIC_VALUES = {
    "bp_systolic": [89.9, 90, 90.1, 130, 179.9, 180, 180.1],
    "heart_rate": [40, 41, 119, 120],
    "spo2": [89, 90, 91],
    "body_temperature": [37.9, 38.0],
    "blood_glucose": [70, 71, 299, 300],
    "body_weight": [70.0, 71.0, 71.5, 72.0, 73.0, 73.99, 74.0],
}

reading_strategy = st.tuples(
    st.integers(0, 2),  # patient
    st.sampled_from(sorted(METRIC_VALUES)),
    st.integers(0, 6),  # which value
    st.integers(-4 * 24 * 60, (PERIOD.days * 24 + 6) * 60),  # minutes from the period start
)


def _readings(drawn: list[tuple[int, str, int, int]]) -> list[tuple[int, str, float, datetime]]:
    out = []
    for patient, metric, which, minutes in drawn:
        values = METRIC_VALUES[metric]
        out.append(
            (
                patient,
                metric,
                float(values[which % len(values)]),
                START + timedelta(minutes=minutes),
            )
        )
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(reading_strategy, max_size=60))
def test_the_replay_finds_the_alerts_ingests_code_raises(drawn):
    """Ingest's `alert_candidates`, given every reading (and every weight as history), and the
    replay raise the same (patient, rule, day) in the period."""
    readings = _readings(drawn)
    rows = [
        AttributedRow(uuid.UUID(int=p), "dev", m, at, v, at, at + timedelta(minutes=1))
        for p, m, v, at in readings
    ]
    history: dict[uuid.UUID, list[AttributedRow]] = {}
    for row in rows:
        if row.metric == "body_weight":
            history.setdefault(row.patient_id, []).append(row)
    expected = {
        (c.rule_id, c.patient_id.int, (c.day - PERIOD.start).days)
        for c in alert_candidates(rows, history)
        if PERIOD.start <= c.day < PERIOD.end
    }
    data = data_of(readings)
    stored: dict[str, tuple[list[int], list[int]]] = {}
    for rule, patient, day in expected:
        stored.setdefault(rule, ([], []))[0].append(patient)
        stored[rule][1].append(day)
    data = data_of(
        readings,
        stored={r: StoredAlerts(np.array(p), np.array(d)) for r, (p, d) in stored.items()},
    )
    result = replay(data, plan_of(DEFAULT_RULES))
    assert result.agrees, [r for r in result.results if r.agreement and not r.agreement.agrees]
    assert result.current_total.alerts == len(expected)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(reading_strategy, max_size=60),
    st.sampled_from(["bp_systolic_high", "heart_rate_high", "glucose_high", "fever"]),
    st.floats(-30, 30),
    st.floats(0, 30),
)
def test_raising_a_high_threshold_never_raises_more_alerts(drawn, rule_id, base, raise_by):
    readings = _readings(drawn)
    [rule] = [r for r in DEFAULT_RULES.thresholds if r.rule_id == rule_id]
    low = ThresholdRule(rule_id, rule.metric, rule.op, rule.threshold + base)
    high = ThresholdRule(rule_id, rule.metric, rule.op, low.threshold + raise_by)
    plan = build_plan(
        {"thresholds": {rule_id: {"threshold": [low.threshold, high.threshold]}}}
        if high.threshold != low.threshold
        else {"thresholds": {rule_id: {"threshold": low.threshold}}},
        only(low),
        source="test",
    )
    result = replay(data_of(readings), plan)
    by_threshold = {
        r.setting.rule.threshold: r.all
        for r in result.results
        if r.setting.rule_id == rule_id and isinstance(r.setting.rule, ThresholdRule)
    }
    assert by_threshold[high.threshold].alerts <= by_threshold[low.threshold].alerts
    assert (
        by_threshold[high.threshold].patients_flagged
        <= by_threshold[low.threshold].patients_flagged
    )
    # and the settings come from the one that alerts most to the one that alerts least
    alerts = [c.alerts for c in by_threshold.values()]
    assert alerts == sorted(alerts, reverse=True)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(reading_strategy, max_size=60))
def test_a_larger_weight_gain_never_raises_more_alerts(drawn):
    plan = build_plan({"weight_gain": {"gain_kg": [1.0, 1.5, 2.0, 3.0]}}, DEFAULT_RULES, source="t")
    result = replay(data_of(_readings(drawn)), plan)
    alerts = [r.all.alerts for r in result.results if r.setting.rule_id == "weight_gain"]
    assert alerts == sorted(alerts, reverse=True)


# -- patients, enrolled days and groups -------------------------------------------------------


def test_enrolled_days_and_the_municipality_of_the_last_enrolled_day():
    # patient 0: two overlapping enrolments (days 0-3 and 2-9, the period is 5 days) -> 5 days,
    # the later one active on the last day; patient 1: ended on day 1 -> 2 days;
    # patient 2: outside the period -> 0; patient 3: two enrolments both active on day 4,
    # the later started wins
    patient_days, chosen = enrolled_days(
        5,
        4,
        patient=np.array([0, 0, 1, 2, 3, 3]),
        first=np.array([0, 2, -10, 6, -3, 1]),
        last=np.array([3, 9, 1, 8, 20, 4]),
        start=np.array([0, 2, -10, 6, -3, 1]),
    )
    assert list(patient_days) == [5, 2, 0, 5]
    assert list(chosen) == [1, 2, -1, 5]


def test_counts_per_group_and_per_patient_week():
    data = data_of(
        [(0, "body_temperature", 38.5, NOON), (2, "body_temperature", 39.0, NOON)],
        patients=3,
        group=[0, 0, 1],
        groups=("centre", "inner"),
    )
    result = replay(data, plan_of(DEFAULT_RULES))
    [fever] = [r for r in result.results if r.setting.rule_id == "fever"]
    assert (fever.all.alerts, fever.all.patients, fever.all.patient_days) == (2, 3, 15)
    assert fever.all.alerts_per_patient_week == pytest.approx(2 / (15 / 7))
    assert fever.groups["centre"].alerts == 1
    assert fever.groups["centre"].patient_days == 10
    assert fever.groups["inner"].alerts_per_100_patient_weeks == pytest.approx(100 / (5 / 7))


def test_no_enrolled_day_gives_no_rate():
    data = ReplayData(PERIOD, "real", 0, np.zeros(0, dtype=np.int64), {})
    result = replay(data, plan_of(DEFAULT_RULES))
    assert result.current_total.alerts_per_patient_week is None
    assert result.agrees


def test_disagreement_with_the_stored_alerts_is_told():
    stored = {
        "spo2_low": StoredAlerts(np.array([1]), np.array([0])),
        "retired_rule": StoredAlerts(np.array([0]), np.array([0])),
    }
    result = replay(data_of([(0, "spo2", 85, NOON)], stored=stored), plan_of(DEFAULT_RULES))
    [spo2] = [r for r in result.results if r.setting.rule_id == "spo2_low"]
    assert spo2.agreement is not None
    assert (spo2.agreement.stored_not_replayed, spo2.agreement.replayed_not_stored) == (1, 1)
    assert result.stored_elsewhere == {"retired_rule": 1}
    assert not result.agrees


# -- the rules file ---------------------------------------------------------------------------


def test_a_rules_file_with_several_settings(tmp_path):
    path = tmp_path / "replay.toml"
    path.write_text(
        "[thresholds.bp_systolic_high]\nthreshold = [190, 170]\n\n"
        '[thresholds.spo2_very_low]\nmetric = "spo2"\nop = "<="\nthreshold = [85, 88]\n\n'
        "[weight_gain]\ngain_kg = [1.5, 2.5]\nwindow_hours = 48\n"
    )
    plan = load_plan(path, DEFAULT_RULES)
    labels = [(s.rule_id, s.label, s.current) for s in plan.settings]
    assert labels[:3] == [
        ("bp_systolic_high", ">= 170", False),
        ("bp_systolic_high", ">= 180", True),
        ("bp_systolic_high", ">= 190", False),
    ]
    assert ("spo2_low", "<= 90", True) in labels
    assert [x for x in labels if x[0] == "spo2_very_low"] == [
        ("spo2_very_low", "<= 88", False),
        ("spo2_very_low", "<= 85", False),
    ]
    assert [x for x in labels if x[0] == "weight_gain"] == [
        ("weight_gain", "+1.5 kg in 48 h", False),
        ("weight_gain", "+2.5 kg in 48 h", False),
        ("weight_gain", "+2 kg in 72 h", True),
    ]
    assert plan.longest_window == timedelta(hours=72)


def test_ingests_own_rules_file_is_a_replay_file(tmp_path):
    path = tmp_path / "ingest.toml"
    path.write_text(
        '[thresholds.fever]\nmetric = "body_temperature"\nop = ">="\nthreshold = 37.5\n'
        "[weight_gain]\ngain_kg = 2.0\nwindow_hours = 72\n"
    )
    plan = load_plan(path, DEFAULT_RULES)
    fever = [(s.label, s.current) for s in plan.settings if s.rule_id == "fever"]
    assert fever == [(">= 37.5", False), (">= 38", True)]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[thresholds.fever\n", "not TOML"),
        ("[tresholds.fever]\nthreshold = 1\n", "tresholds: unknown table"),
        ("[thresholds.fever]\ntreshold = 37\n", "thresholds.fever.treshold: unknown key"),
        (
            '[thresholds.fever]\nthreshold = "high"\n',
            "thresholds.fever.threshold: 'high' is not a number",
        ),
        ("[thresholds.fever]\nthreshold = []\n", "thresholds.fever.threshold: an empty list"),
        ("[thresholds.fever]\nthreshold = [37, 37.0]\n", "37 is given twice"),
        ("[thresholds.fever]\nthreshold = true\n", "True is not a number"),
        ("[thresholds.fever]\nthreshold = nan\n", "nan is not a finite number"),
        ("[thresholds.fever]\n", "threshold is missing"),
        (
            '[thresholds.fever]\nop = "<="\nthreshold = 36\n',
            "must be the current rule's (body_temperature >=)",
        ),
        ("[thresholds.new_rule]\nthreshold = 5\n", "thresholds.new_rule: metric is missing"),
        (
            '[thresholds.new_rule]\nmetric = "mood"\nop = ">="\nthreshold = 5\n',
            "unknown metric 'mood'",
        ),
        (
            '[thresholds.new_rule]\nmetric = "spo2"\nop = "<"\nthreshold = 5\n',
            "'<' is not an operator",
        ),
        ("[thresholds.weight_gain]\nthreshold = 5\n", "weight_gain is set in [weight_gain]"),
        ("[weight_gain]\ngain_kg = [0, 2]\n", "weight_gain.gain_kg: 0 is not above 0"),
        ("[weight_gain]\nwindow = 48\n", "weight_gain.window: unknown key"),
        ("thresholds = 3\n", "thresholds: must be tables"),
    ],
)
def test_a_wrong_rules_file_gets_one_line_naming_what_is_wrong(tmp_path, text, complaint):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_plan(path, DEFAULT_RULES)
    message = str(caught.value)
    assert message.startswith(f"alert rules {path}: ")
    assert complaint in message
    assert "\n" not in message
    assert caught.value.exit_status == 2


def test_a_missing_rules_file_and_a_backwards_period():
    with pytest.raises(ConfigurationError, match="No such file"):
        load_plan(Path("/nonexistent/rules.toml"), DEFAULT_RULES)
    with pytest.raises(InvalidInputError, match="--from 2026-02-01 is not before --to 2026-02-01"):
        Period(date(2026, 2, 1), date(2026, 2, 1))


# -- end to end: ingest fills a real store, the replay finds exactly its alerts ---------------


def run_command(argv: list[str], settings_: Settings) -> int:
    """What `ehealthlab` does with the replay's subcommand (cli.main's error handling)."""
    parser = OneLineParser(prog="ehealthlab")
    register(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(args.handler(args, settings_))
    except EhealthlabError as exc:
        print(f"ehealthlab: {exc}", file=sys.stderr)
        return exc.exit_status


class Store:
    """A migrated store with providers, devices, patients and enrolments; readings go in
    through ingest's `store_judged`, which also raises (and stores) the alerts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.patients: dict[str, uuid.UUID] = {}
        self.devices: dict[str, str] = {}
        with psycopg.connect(url, autocommit=True) as conn:

            def organisation(kind: str, name: str, simulated: bool) -> uuid.UUID:
                row = conn.execute(
                    "INSERT INTO organisations (kind, name, simulated) VALUES (%s, %s, %s)"
                    " RETURNING id",
                    (kind, name, simulated),
                ).fetchone()
                assert row is not None
                return row[0]

            inner, centre = (
                conn.execute(
                    "SELECT istat_code FROM municipalities WHERE area = %s"
                    " ORDER BY istat_code LIMIT 1",
                    (area,),
                ).fetchone()[0]
                for area in ("inner", "centre")
            )
            self.municipality = {"inner": inner, "centre": centre}
            for simulated in (False, True):
                suffix = "sim" if simulated else "real"
                startup = organisation("startup", f"startup-{suffix}", simulated)
                provider = organisation("provider", f"provider-{suffix}", simulated)
                for n, area in enumerate(("inner", "centre", "inner")):
                    label = f"{suffix}-{n}"
                    device = f"mon-{label}"
                    conn.execute(
                        "INSERT INTO devices (device_id, organisation_id, device_type, model,"
                        " serial, simulated) VALUES (%s, %s, 'multiparameter_monitor', 'M', %s,"
                        " %s)",
                        (device, startup, device, simulated),
                    )
                    patient = conn.execute(
                        "INSERT INTO patients (organisation_id, identifier_hash, label)"
                        " VALUES (%s, %s, %s) RETURNING id",
                        (provider, label.encode(), label),
                    ).fetchone()[0]
                    # the third patient starts on the period's second day
                    start = "2026-03-20" if n < 2 else "2026-03-29"
                    conn.execute(
                        "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
                        " VALUES (%s, %s, %s, %s)",
                        (patient, device, self.municipality[area], start),
                    )
                    self.patients[label] = patient
                    self.devices[label] = device

    def ingest(self, messages: list[tuple[str, datetime, datetime, list[dict]]]) -> None:
        """(device, received_at, sent_at, readings) messages, stored in order of arrival, a
        few per batch, through ingest's own transaction."""
        messages = sorted(messages, key=lambda m: m[1])
        with psycopg.connect(self.url) as conn:
            writer = ReadingWriter(conn)
            for first in range(0, len(messages), 4):
                judged = []
                for device, received, sent, items in messages[first : first + 4]:
                    payload = orjson.dumps({
                        "schema": "ehl.readings/1",
                        "msg_id": str(uuid.uuid4()),
                        "sent_at": sent.isoformat(),
                        "readings": items,
                    })  # fmt: skip
                    message = ReceivedMessage(
                        f"ehl/v1/devices/{device}/readings", payload, 1, False, 0, received, True
                    )
                    judged.append(judge(message, lambda _: KnownDevice("multiparameter_monitor")))
                store_judged(conn, writer, judged, DEFAULT_RULES)

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, params).fetchall()


UNITS = {
    "bp_systolic": "mm[Hg]",
    "bp_diastolic": "mm[Hg]",
    "heart_rate": "/min",
    "spo2": "%",
    "body_temperature": "Cel",
    "blood_glucose": "mg/dL",
    "body_weight": "kg",
}
# mostly ordinary values, and a few on and around each threshold
DRAWS = {
    "bp_systolic": [125] * 12 + [85, 90, 170, 180, 185, 195],
    "bp_diastolic": [80] * 12 + [105, 110, 115],
    "heart_rate": [72] * 12 + [38, 40, 110, 120, 130],
    "spo2": [97] * 12 + [86, 88, 90, 92],
    "body_temperature": [36.6] * 12 + [37.5, 37.9, 38.0, 38.6],
    "blood_glucose": [110] * 12 + [65, 70, 280, 300, 320],
}


def pilot_messages(seed: int) -> list[tuple[str, datetime, datetime, list[dict]]]:
    """Ten days of every metric for each patient (the period and days around it), values
    around the thresholds, weights drifting up and down; some messages arrive days late (a
    backlog), one device's clock is an hour behind (its times are corrected), and readings
    sit on the midnights around the daylight-saving change."""
    rng = random.Random(seed)
    messages = []
    seqs: dict[str, int] = {}
    first_day = START - timedelta(days=4)
    for label in ("real-0", "real-1", "real-2", "sim-0", "sim-1", "sim-2"):
        device = f"mon-{label}"
        weight = 70.0
        for day in range(10):
            base = first_day + timedelta(days=day)
            moments = [base + timedelta(minutes=rng.randrange(0, 23 * 60)) for _ in range(3)]
            if day == 4:  # the midnights of the change (28 -> 29 March, 29 -> 30 March)
                moments += [utc(2026, 3, 28, 22, 59, 59), utc(2026, 3, 28, 23, 0)]
                moments += [utc(2026, 3, 29, 21, 59, 59), utc(2026, 3, 29, 22, 0)]
            for at in moments:
                weight = round(weight + rng.choice([-1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 2.5, -2.5]), 1)
                items = []
                for metric, values in DRAWS.items():
                    items.append((metric, float(rng.choice(values))))
                items.append(("body_weight", weight))
                readings = []
                for metric, value in items:
                    seqs[device] = seqs.get(device, 0) + 1
                    readings.append({
                        "seq": seqs[device], "metric": metric, "value": value,
                        "unit": UNITS[metric], "at": at.isoformat(),
                    })  # fmt: skip
                delay = timedelta(seconds=rng.randrange(2, 600))
                if rng.random() < 0.15:
                    delay = timedelta(hours=rng.randrange(20, 90))  # a backlog
                received = at + delay
                sent = received
                if label == "real-1" and day % 3 == 0:
                    sent = received - timedelta(hours=1)  # clock behind: corrected
                messages.append((device, received, sent, readings))
    return messages


@pytest.fixture
def store(plain_admin_url: str, migrated_template: str) -> Iterator[Store]:
    with template_copy(plain_admin_url, migrated_template) as database_url:
        yield Store(database_url)


def test_the_replay_of_the_current_rules_reproduces_exactly_the_alerts_ingest_stored(
    store, tmp_path, capsys
):
    store.ingest(pilot_messages(seed=20260329))
    # ingest did raise alerts, of every kind the test means to cover, before and in the period
    rules_stored = {r for (r,) in store.query("SELECT DISTINCT rule FROM alerts")}
    assert {"weight_gain", "bp_systolic_high", "spo2_low", "fever"} <= rules_stored
    assert store.query("SELECT count(*) FROM readings WHERE clock_corrected")[0][0] > 0
    assert store.query("SELECT count(*) FROM alerts WHERE day < %s", PERIOD.start)[0][0] > 0

    stored = {
        (patient, rule, day)
        for patient, rule, day in store.query(
            "SELECT a.patient_id, a.rule, a.day FROM alerts a"
            " JOIN patients p ON p.id = a.patient_id"
            " JOIN organisations o ON o.id = p.organisation_id"
            " WHERE NOT o.simulated AND a.day >= %s AND a.day < %s",
            PERIOD.start,
            PERIOD.end,
        )
    }
    with psycopg.connect(store.url) as conn:
        data = fetch_replay_data(conn, PERIOD, "real", plan_of(DEFAULT_RULES), None)
    result = replay(data, plan_of(DEFAULT_RULES))
    assert result.agrees
    assert result.current_agreement.stored == len(stored) > 0
    assert result.current_total.alerts == len(stored)
    per_rule: dict[str, int] = {}
    for _, rule, _ in stored:
        per_rule[rule] = per_rule.get(rule, 0) + 1
    assert {r.setting.rule_id: r.all.alerts for r in result.results if r.all.alerts} == per_rule
    # enrolled days: two patients the whole period, the third from its second day
    assert (result.everyone.patients, result.everyone.patient_days) == (3, 5 + 5 + 4)

    # the command, with other settings to compare, by area, as JSON
    rules = tmp_path / "replay.toml"
    rules.write_text(
        "[thresholds.bp_systolic_high]\nthreshold = [170, 180, 190]\n"
        "[thresholds.spo2_low]\nthreshold = [88, 92]\n"
        "[weight_gain]\ngain_kg = [1.5, 2.0, 3.0]\n"
    )
    settings_ = Settings(database_url=store.url, state_dir=tmp_path / "no-stack", alert_rules=None)
    argv = ["replay-alerts", "--from", "2026-03-28", "--to", "2026-04-02", "--rules", str(rules)]
    capsys.readouterr()
    assert run_command([*argv, "--by", "area", "--format", "json"], settings_) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["agrees"] is True
    assert document["population"] == "real"
    assert document["current_total"]["stored_alerts"] == len(stored)
    systolic = [s for s in document["settings"] if s["rule"] == "bp_systolic_high"]
    assert [s["threshold"] for s in systolic] == [170, 180, 190]
    assert [s["current"] for s in systolic] == [False, True, False]
    assert systolic[1]["alerts"] == per_rule.get("bp_systolic_high", 0)
    assert systolic[0]["alerts"] >= systolic[1]["alerts"] >= systolic[2]["alerts"]
    gains = [s for s in document["settings"] if s["rule"] == "weight_gain"]
    assert [s["alerts"] for s in gains] == sorted((s["alerts"] for s in gains), reverse=True)
    for entry in document["settings"]:
        groups = entry["groups"].values()
        assert sum(g["alerts"] for g in groups) == entry["alerts"]
        assert sum(g["patients_flagged"] for g in groups) == entry["patients_flagged"]
    assert set(document["groups"]) == {"inner", "centre"}
    assert document["groups"]["inner"]["patient_days"] == 9

    # the simulated population never mixes with the real one, and agrees as well
    assert run_command([*argv, "--population", "simulated", "--format", "json"], settings_) == 0
    simulated = json.loads(capsys.readouterr().out)
    assert simulated["agrees"] is True
    sim_stored = store.query(
        "SELECT count(*) FROM alerts a JOIN patients p ON p.id = a.patient_id"
        " JOIN organisations o ON o.id = p.organisation_id"
        " WHERE o.simulated AND a.day >= %s AND a.day < %s",
        PERIOD.start,
        PERIOD.end,
    )[0][0]
    assert simulated["current_total"]["stored_alerts"] == sim_stored > 0

    # for people: a table, and the verdict
    assert run_command(argv, settings_) == 0
    text = capsys.readouterr().out
    assert ">= 180 (current)" in text
    assert f"reproduces the {len(stored)} alerts ingest stored" in text

    # CSV: a row per setting and one for all current rules
    assert run_command([*argv, "--format", "csv", "--out", str(tmp_path / "r.csv")], settings_) == 0
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("group,rule,setting,current")
    assert len(lines) == 1 + len(document["settings"]) + 1

    # other rules in force than the ones given: said, not hidden
    other = tmp_path / "other.toml"
    other.write_text(
        '[thresholds.fever]\nmetric = "body_temperature"\nop = ">="\nthreshold = 37.5\n'
    )
    assert run_command([*argv[:5], "--current-rules", str(other)], settings_) == 0
    assert "does not reproduce" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--from", "2026-04-02", "--to", "2026-03-28"], "--from 2026-04-02 is not before --to"),
        (["--from", "2026-02-30", "--to", "2026-03-28"], "'2026-02-30' is not a date"),
        (["--from", "2026-03-01", "--to", "2026-03-28", "--population", "all"], "invalid choice"),
        (
            ["--from", "2026-03-01", "--to", "2026-03-28", "--rules", "/nonexistent.toml"],
            "No such file",
        ),
    ],
)
def test_wrong_arguments_get_one_line_and_exit_status_2(argv, complaint, capsys, tmp_path):
    settings_ = Settings(database_url=None, state_dir=tmp_path, alert_rules=None)
    assert run_command(["replay-alerts", *argv], settings_) == 2
    err = capsys.readouterr().err
    assert complaint in err
    assert len(err.strip().splitlines()) == 1
