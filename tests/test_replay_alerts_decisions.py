"""Alert-threshold replay, pure: ingest's rule code over ReplayData built by hand, with other
thresholds. Thresholds at their limits, one alert per patient, rule and day, days cut at
midnight in Europe/Rome across both daylight-saving changes, weight gain across the period's
start, the same decisions as ingest's own code (generated), and counts per group and per
patient-week."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_fixtures import PERIOD, START, utc

from ehealthlab.contract.pilot_time import day_start, pilot_day
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
from ehealthlab.evaluation.replay_plan import build_plan, plan_of
from ehealthlab.ingest.alerts import (
    DEFAULT_RULES,
    AlertRules,
    ThresholdRule,
    WeightGainRule,
    alert_candidates,
)
from ehealthlab.store.readings import AttributedRow


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
