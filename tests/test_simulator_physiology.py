"""The simulator's physiology, pure: signals stay within the catalogue's ranges at any moment,
even with stacked episodes; blood pressure has a circadian shape; and over long runs the
episodes, and the platform's own alert rules applied to the generated readings, fire at the
documented rates.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from datetime import date, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simulator_fixtures import FULL_ADHERENCE, one_municipality, scenario_with

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.ingest.alerts import DEFAULT_RULES, alert_candidates
from ehealthlab.simulators.behaviour import DEFAULT_BEHAVIOUR, DevicePlan, PatientSimulation
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.episodes import DAYS_PER_MONTH, DEFAULT_PHYSIOLOGY, EpisodeKind
from ehealthlab.simulators.measurement_stream import patient_simulation
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.physiology import BURN_IN_DAYS, PatientPhysiology
from ehealthlab.simulators.seeds import derive
from ehealthlab.store.readings import AttributedRow

ALL_EPISODES_OFF = {kind.value: 0.0 for kind in EpisodeKind}


# -- physiology: ranges ------------------------------------------------------------------------

conditions_strategy = st.sets(st.sampled_from(list(Condition)), max_size=4)
device_strategy = st.sampled_from(
    [
        "blood_pressure_monitor",
        "pulse_oximeter",
        "weighing_scale",
        "thermometer",
        "glucometer",
        "activity_tracker",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    conditions=conditions_strategy,
    device_types=st.sets(device_strategy, min_size=1, max_size=3),
    start=st.dates(date(2025, 1, 1), date(2027, 12, 31)),
    days=st.integers(1, 4),
    rate_factor=st.sampled_from([0.0, 1.0, 40.0]),
)
def test_measurements_stay_within_the_catalogue_and_the_period(  # noqa: PLR0917 - hypothesis
    seed, conditions, device_types, start, days, rate_factor
):
    rates = {
        k.value: m.per_patient_month * rate_factor for k, m in DEFAULT_PHYSIOLOGY.episodes.items()
    }
    simulation = PatientSimulation(
        conditions=conditions,
        devices=[DevicePlan(d, {}) for d in sorted(device_types)],
        start=start,
        days=days,
        seed=derive(seed),
        physiology=DEFAULT_PHYSIOLOGY.with_rates(rates),
        behaviour=DEFAULT_BEHAVIOUR.with_overrides({"non_starter_share": 0.0}),
    )
    previous = None
    for item in simulation.measurements():
        taken_at = item.measurement.taken_at
        assert taken_at.utcoffset() == timedelta(0)
        assert start <= taken_at.astimezone(PILOT_ZONE).date() < start + timedelta(days=days)
        assert previous is None or previous <= taken_at
        previous = taken_at
        values = item.measurement.values
        assert values and set(values) <= DEVICE_TYPES[item.device_type].metrics
        for metric, value in values.items():
            assert METRICS[metric].minimum <= value <= METRICS[metric].maximum, (metric, value)
            assert math.isfinite(value)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    conditions=conditions_strategy,
    minute=st.integers(0, 10 * 24 * 60 - 1),
    rate_factor=st.sampled_from([1.0, 200.0]),
)
def test_every_signal_stays_within_range_at_any_moment_even_with_stacked_episodes(
    seed, conditions, minute, rate_factor
):
    rates = {
        k.value: m.per_patient_month * rate_factor for k, m in DEFAULT_PHYSIOLOGY.episodes.items()
    }
    physiology = PatientPhysiology(
        conditions, derive(seed), date(2026, 3, 25), 10, DEFAULT_PHYSIOLOGY.with_rates(rates)
    )
    at = physiology.origin + timedelta(minutes=minute)
    values = physiology.measure(METRICS, at, np.random.default_rng(seed))
    assert set(values) == set(METRICS)
    for metric, value in values.items():
        assert METRICS[metric].minimum <= value <= METRICS[metric].maximum, (metric, value)


def test_blood_pressure_has_a_circadian_shape():
    """Awake and just up: morning surge and white coat above the evening; asleep: the dip."""
    rng = np.random.default_rng(0)
    morning, evening, night = [], [], []
    for i in range(40):
        p = PatientPhysiology(
            [Condition.HYPERTENSION],
            derive(11, i),
            date(2026, 5, 4),
            3,
            DEFAULT_PHYSIOLOGY.with_rates(ALL_EPISODES_OFF),
        )
        b = p.baseline
        day = p.origin + timedelta(days=1)
        for _ in range(5):
            morning.append(
                p.measure(
                    ["bp_systolic"], day + timedelta(hours=b.wake_hour + 0.25), rng, awake=True
                )["bp_systolic"]
            )
            evening.append(
                p.measure(
                    ["bp_systolic"], day + timedelta(hours=b.bed_hour - 1.5), rng, awake=True
                )["bp_systolic"]
            )
            night.append(p.measure(["bp_systolic"], day + timedelta(hours=3), rng)["bp_systolic"])
    assert np.mean(morning) - np.mean(evening) > 5
    assert np.mean(evening) - np.mean(night) > 8


# -- physiology: episodes and alerts -----------------------------------------------------------


def test_episodes_start_at_their_configured_rates():
    days, patients = 365, 400
    all_conditions = list(Condition)
    counts: Counter[EpisodeKind] = Counter()
    for i in range(patients):
        physiology = PatientPhysiology(all_conditions, derive(3, i), date(2026, 1, 1), days)
        counts.update(e.kind for e in physiology.episodes if 0 <= e.start < days)
    for kind, model in DEFAULT_PHYSIOLOGY.episodes.items():
        months = patients * days / DAYS_PER_MONTH
        if kind is EpisodeKind.HYPOGLYCAEMIA:  # a Poisson count per day
            expected = months * model.per_patient_month
        else:  # a renewal process: no new episode while one is under way
            mean_gap = DAYS_PER_MONTH / model.per_patient_month
            expected = patients * days / (mean_gap + model.mean_duration_days)
        assert abs(counts[kind] - expected) < 4 * math.sqrt(expected) + 1, (
            kind,
            counts[kind],
            expected,
        )


def _readings(scenario, patient, index):
    """The patient's readings as the store would hand them to the rules (received at once)."""
    patient_id = uuid.UUID(int=index + 1)
    rows = [
        AttributedRow(
            patient_id, item.device_type, metric, item.taken_at, value, item.taken_at, item.taken_at
        )
        for item in patient_simulation(scenario, patient).measurements()
        for metric, value in item.measurement.values.items()
    ]
    return patient_id, rows


def _alerts(scenario):
    """Alerts per rule from the platform's own rule code, and the patient-months observed."""
    found: Counter[str] = Counter()
    months = 0.0
    per_patient = {}
    for index, patient in enumerate(simulated_patients(scenario)):
        patient_id, rows = _readings(scenario, patient, index)
        weights = [r for r in rows if r.metric == "body_weight"]
        alerts = alert_candidates(rows, {patient_id: weights}, DEFAULT_RULES)
        found.update(a.rule_id for a in alerts)
        per_patient[patient.patient_id] = alerts
        months += patient.enrolment_days / DAYS_PER_MONTH
    return found, months, per_patient


@pytest.fixture(scope="module")
def long_run_alerts():
    """The example's mix of conditions and care plans: 120 patients for 120 days, with the
    episodes and without them (noise alone)."""
    with_episodes = _alerts(one_municipality("001003", 120, 120))
    noise_only = _alerts(one_municipality("001003", 120, 120, episode_rates=ALL_EPISODES_OFF))
    return with_episodes, noise_only


def test_alerts_fire_at_a_realistic_rate_mostly_from_episodes(long_run_alerts):
    (found, months, _), (noise, noise_months, _) = long_run_alerts
    rate = sum(found.values()) / months
    noise_rate = sum(noise.values()) / noise_months
    assert 0.5 <= rate <= 2.0, found
    assert noise_rate <= 0.1, noise
    assert noise_rate <= 0.15 * rate
    # every condition's episodes show up through its own rules
    for rule in ("bp_systolic_high", "spo2_low", "weight_gain", "glucose_low", "glucose_high"):
        assert found[rule] >= 5 * (noise[rule] + 1), (rule, found[rule], noise[rule])
    assert noise["weight_gain"] <= 2


def test_heart_failure_decompensation_raises_the_weight_gain_alert():
    """A patient weighing every morning: ≥ 2 kg over ~3 days must trip the 72-hour rule."""
    scenario = scenario_with(
        municipalities=[{"istat_code": "001272", "patients": 60}],
        snai_mix=[],
        period={"start": date(2026, 1, 5), "days": 180},
        conditions=[{"conditions": ["heart_failure"], "share": 1.0}],
        behaviour=FULL_ADHERENCE,
        episode_rates={"hf_decompensation": 0.3},
    )
    detected = episodes = 0
    for index, patient in enumerate(simulated_patients(scenario)):
        simulation = patient_simulation(scenario, patient)
        patient_id, rows = _readings(scenario, patient, index)
        weights = [r for r in rows if r.metric == "body_weight"]
        alerts = [
            a
            for a in alert_candidates(weights, {patient_id: weights})
            if a.rule_id == "weight_gain"
        ]
        for episode in simulation.physiology.episodes:
            if episode.kind is not EpisodeKind.DECOMPENSATION or not 1 <= episode.start < 170:
                continue
            start, end = simulation.physiology.episode_bounds(episode)
            episodes += 1
            detected += any(start <= a.reading.measured_at <= end for a in alerts)
    assert episodes >= 60
    assert detected / episodes >= 0.9


def test_episode_bounds_and_burn_in():
    """Episodes under way at the start exist (drawn from before the period)."""
    physiology = PatientPhysiology(list(Condition), derive(1), date(2026, 1, 1), 30)
    assert all(e.end > -BURN_IN_DAYS and e.start < 30 for e in physiology.episodes)
    for episode in physiology.episodes:
        start, end = physiology.episode_bounds(episode)
        assert start < end
