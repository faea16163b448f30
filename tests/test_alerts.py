"""Clinical alert rules: pure, table-driven, and one alert per patient, rule and day."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.contract.pilot_time import pilot_day
from ehealthlab.errors import ConfigurationError
from ehealthlab.ingest.alerts import DEFAULT_RULES, alert_candidates, load_rules
from ehealthlab.store.readings import AttributedRow

PATIENT = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)
T0 = datetime(2026, 3, 10, 7, 0, tzinfo=UTC)


def reading(
    metric: str,
    value: float,
    *,
    at: datetime = T0,
    patient: uuid.UUID = PATIENT,
    received: datetime | None = None,
) -> AttributedRow:
    return AttributedRow(
        patient, "dev-0001", metric, at, value, at, received or at + timedelta(seconds=5)
    )


@pytest.mark.parametrize(
    ("metric", "value", "rules"),
    [
        ("bp_systolic", 180, ["bp_systolic_high"]),
        ("bp_systolic", 179.9, []),
        ("bp_systolic", 90, ["bp_systolic_low"]),
        ("bp_systolic", 90.1, []),
        ("bp_diastolic", 110, ["bp_diastolic_high"]),
        ("bp_diastolic", 109, []),
        ("heart_rate", 120, ["heart_rate_high"]),
        ("heart_rate", 40, ["heart_rate_low"]),
        ("heart_rate", 41, []),
        ("spo2", 90, ["spo2_low"]),
        ("spo2", 91, []),
        ("body_temperature", 38.0, ["fever"]),
        ("body_temperature", 37.9, []),
        ("blood_glucose", 70, ["glucose_low"]),
        ("blood_glucose", 300, ["glucose_high"]),
        ("blood_glucose", 150, []),
        ("steps", 100_000, []),
        ("respiratory_rate", 40, []),
    ],
)
def test_threshold_rules_at_and_around_their_limits(metric, value, rules):
    found = alert_candidates([reading(metric, value)], {})
    assert [c.rule_id for c in found] == rules


def weights(*measured: tuple[datetime, float]) -> list[AttributedRow]:
    return [reading("body_weight", kg, at=when) for when, kg in measured]


WEIGHTS = weights(
    *[(T0 - timedelta(hours=h), kg) for h, kg in [(80, 70.0), (48, 72.0), (24, 73.5), (1, 74.0)]]
)


@pytest.mark.parametrize(
    ("value", "history", "raised"),
    [
        (74.0, WEIGHTS, True),  # lowest within 72 h is 72.0 (48 h ago): +2.0
        (73.9, WEIGHTS, False),  # 70.0 is 80 h ago: outside the window
        (76.0, [], False),  # nothing to compare with
        (76.0, weights((T0, 70.0)), False),  # the same instant does not precede
        (76.0, weights((T0 + timedelta(hours=1), 70.0)), False),  # later weights do not count
        (72.0, weights((T0 - timedelta(hours=72), 70.0)), True),  # the window includes 72 h
    ],
)
def test_weight_gain_compares_with_the_lowest_weight_of_the_preceding_72_hours(
    value, history, raised
):
    found = alert_candidates([reading("body_weight", value)], {PATIENT: history})
    assert [c.rule_id for c in found] == (["weight_gain"] if raised else [])


@pytest.mark.parametrize(
    ("later_hours", "later_kg", "raised"),
    [(24, 72.0, True), (72, 72.0, True), (73, 72.0, False), (24, 71.9, False)],
)
def test_a_late_lower_weight_makes_an_earlier_arrived_higher_one_breach(
    later_hours, later_kg, raised
):
    """Arrival order does not matter: the backlog's 70.0 kg (measured first, arriving last)
    makes the 72.0 kg measured 24 h later breach the rule, raised when the 70.0 arrived."""
    measured_later = T0 + timedelta(hours=later_hours)
    higher = reading("body_weight", later_kg, at=measured_later, received=measured_later)
    arrived = T0 + timedelta(hours=80)
    lower = reading("body_weight", 70.0, at=T0, received=arrived)
    found = alert_candidates([lower], {PATIENT: [lower, higher]})
    assert [(c.rule_id, c.reading, c.raised_at) for c in found] == (
        [("weight_gain", higher, arrived)] if raised else []
    )


@given(
    st.lists(st.tuples(st.integers(0, 10 * 24), st.floats(60, 66)), min_size=1, max_size=12),
    st.randoms(use_true_random=False),
)
def test_weight_gain_alerts_do_not_depend_on_arrival_order(measured, shuffler):
    """Whatever the order in which weights arrive (one at a time, each seeing all stored so
    far), the set of (day, rule) raised is the same as when they arrive in measurement order."""
    readings = [reading("body_weight", kg, at=T0 + timedelta(hours=h)) for h, kg in measured]

    def raised(order):
        keys, stored = set(), []
        for r in order:
            stored.append(r)
            keys |= {c.key for c in alert_candidates([r], {PATIENT: list(stored)})}
        return keys

    in_order = raised(sorted(readings, key=lambda r: r.measured_at))
    shuffled = list(readings)
    shuffler.shuffle(shuffled)
    assert raised(shuffled) == in_order


def test_one_alert_per_patient_rule_and_day_first_arrival_wins():
    late_first = reading(
        "bp_systolic", 200, at=T0 + timedelta(hours=2), received=T0 + timedelta(hours=2)
    )
    early_second = reading("bp_systolic", 190, at=T0, received=T0 + timedelta(hours=5))
    next_day = reading("bp_systolic", 185, at=T0 + timedelta(days=1))
    other = reading("bp_systolic", 185, patient=OTHER)
    found = alert_candidates([early_second, late_first, next_day, other], {})
    assert sorted((c.patient_id, c.day, c.reading.value) for c in found) == [
        (PATIENT, date(2026, 3, 10), 200),  # arrived first, though measured later
        (PATIENT, date(2026, 3, 11), 185),
        (OTHER, date(2026, 3, 10), 185),
    ]


def test_the_day_is_the_europe_rome_day_of_measurement():
    assert pilot_day(datetime(2026, 3, 9, 23, 30, tzinfo=UTC)) == date(2026, 3, 10)
    found = alert_candidates(
        [
            reading("spo2", 88, at=datetime(2026, 3, 9, 23, 30, tzinfo=UTC)),
            reading("spo2", 87, at=datetime(2026, 3, 10, 8, 0, tzinfo=UTC)),
        ],
        {},
    )
    assert len(found) == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["bp_systolic", "spo2", "heart_rate"]),
            st.floats(0, 400),
            st.integers(0, 5 * 24),
        ),
        max_size=40,
    )
)
def test_never_two_alerts_with_the_same_key(items):
    readings = [reading(m, v, at=T0 + timedelta(hours=h)) for m, v, h in items]
    found = alert_candidates(readings, {})
    keys = [c.key for c in found]
    assert len(keys) == len(set(keys))
    for candidate in found:
        assert any(
            r.breached_by(candidate.reading.value)
            for r in DEFAULT_RULES.thresholds
            if r.rule_id == candidate.rule_id
        )


def test_rules_are_configurable_from_a_toml_file(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(
        '[thresholds.bp_systolic_high]\nmetric = "bp_systolic"\nop = ">="\nthreshold = 170\n'
        "[weight_gain]\ngain_kg = 1.5\nwindow_hours = 48\n"
    )
    rules = load_rules(path)
    assert [c.rule_id for c in alert_candidates([reading("bp_systolic", 172)], {}, rules)] == [
        "bp_systolic_high"
    ]
    assert rules.weight_gain.gain_kg == 1.5 and rules.weight_gain.window == timedelta(hours=48)
    assert len(rules.thresholds) == len(DEFAULT_RULES.thresholds)
    path.write_text('[thresholds.x]\nmetric = "spo2"\nop = "<"\nthreshold = 1\n')
    with pytest.raises(ConfigurationError, match="op must be"):
        load_rules(path)


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf"])
def test_a_rule_file_threshold_must_be_a_finite_number(tmp_path, threshold):
    path = tmp_path / "rules.toml"
    path.write_text(f'[thresholds.x]\nmetric = "spo2"\nop = "<="\nthreshold = {threshold}\n')
    with pytest.raises(ConfigurationError, match="threshold must be a finite number"):
        load_rules(path)
