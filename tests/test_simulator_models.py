"""The simulator's pure models: physiology, behaviour, broadband and scenarios.

Seeded runs must be reproducible and each patient's stream independent of the others;
signals stay within the catalogue's ranges; over long runs the episodes, and the platform's
own alert rules applied to the generated readings, fire at the documented rates; adherence
declines; inner areas get worse broadband than centres.
"""

from __future__ import annotations

import copy
import itertools
import math
import tomllib
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.errors import InvalidInputError
from ehealthlab.ingest.alerts import DEFAULT_RULES, alert_candidates
from ehealthlab.simulators.behaviour import (
    DEFAULT_BEHAVIOUR,
    DevicePlan,
    PatientSimulation,
    slot_hours,
)
from ehealthlab.simulators.broadband import (
    DEFAULT_CLASS_PROFILES,
    SNAI_CLASSES,
    ConnectivityProfile,
    Outage,
    connectivity_profile,
    outage_schedule,
)
from ehealthlab.simulators.care_plans import assign_devices
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.episodes import DAYS_PER_MONTH, DEFAULT_PHYSIOLOGY, EpisodeKind
from ehealthlab.simulators.measurement_stream import patient_simulation, pilot_measurements
from ehealthlab.simulators.municipality_broadband import municipality_profile, outage_schedules
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.physiology import BURN_IN_DAYS, PatientPhysiology
from ehealthlab.simulators.scenario import (
    EXAMPLE_SCENARIO,
    load_scenario,
    parse_scenario,
    reference_municipalities,
)
from ehealthlab.simulators.seeds import derive
from ehealthlab.store.readings import AttributedRow

ALL_EPISODES_OFF = {kind.value: 0.0 for kind in EpisodeKind}
FULL_ADHERENCE = {
    "initial_adherence_mean": 1.0,
    "floor_ratio_mean": 1.0,
    "dropout_per_day": 0.0,
    "non_starter_share": 0.0,
    "weekend_factor": 1.0,
    "reading_skip_mean": 0.0,
    "late_share_mean": 0.0,
}


@cache
def example_document() -> dict:
    return tomllib.loads(EXAMPLE_SCENARIO.read_text(encoding="utf-8"))


@cache
def reference():
    return reference_municipalities()


def scenario_with(**changes):
    """The example scenario with top-level fields replaced (None deletes one)."""
    document = copy.deepcopy(example_document())
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return parse_scenario(document, reference())


def one_municipality(code: str, patients: int, days: int, **changes):
    return scenario_with(
        municipalities=[{"istat_code": code, "patients": patients}],
        snai_mix=[],
        period={"start": date(2026, 1, 5), "days": days},
        **changes,
    )


def as_data(measurements):
    return [
        (m.patient.patient_id, m.device.device_type, m.taken_at, dict(m.measurement.values))
        for m in measurements
    ]


# -- reproducibility ---------------------------------------------------------------------------


def test_the_same_scenario_gives_the_same_pilot():
    first = one_municipality("001003", 4, 5)
    again = one_municipality("001003", 4, 5)
    assert simulated_patients(first) == simulated_patients(again)
    assert as_data(pilot_measurements(first)) == as_data(pilot_measurements(again))
    other_seed = scenario_with(
        municipalities=[{"istat_code": "001003", "patients": 4}],
        snai_mix=[],
        period={"start": date(2026, 1, 5), "days": 5},
        seed=1,
    )
    assert as_data(pilot_measurements(other_seed)) != as_data(pilot_measurements(first))


def test_adding_patients_does_not_change_anyone_else():
    small = one_municipality("001003", 3, 7)
    larger = scenario_with(
        municipalities=[
            {"istat_code": "001272", "patients": 5},
            {"istat_code": "001003", "patients": 4},
        ],
        snai_mix=[{"snai_class": "F", "patients": 2, "municipalities": 1}],
        period={"start": date(2026, 1, 5), "days": 7},
    )
    before = {p.patient_id: p for p in simulated_patients(small)}
    after = {p.patient_id: p for p in simulated_patients(larger)}
    assert set(before) < set(after)
    for patient_id, patient in before.items():
        assert after[patient_id] == patient
        assert as_data(pilot_measurements(small, [patient])) == as_data(
            pilot_measurements(larger, [after[patient_id]])
        )


def test_a_device_and_a_day_do_not_depend_on_what_else_is_simulated():
    seed = derive(7, "patient")
    cuff = DevicePlan("blood_pressure_monitor", {"bp_systolic": 2})
    scale = DevicePlan("weighing_scale", {"body_weight": 1})
    conditions = [Condition.HEART_FAILURE, Condition.HYPERTENSION]
    behaviour = DEFAULT_BEHAVIOUR.with_overrides(FULL_ADHERENCE)
    alone = PatientSimulation(
        conditions=conditions,
        devices=[cuff],
        start=date(2026, 3, 20),
        days=20,
        seed=seed,
        behaviour=behaviour,
    )
    both = PatientSimulation(
        conditions=conditions,
        devices=[scale, cuff],
        start=date(2026, 3, 20),
        days=20,
        seed=seed,
        behaviour=behaviour,
    )
    assert list(alone.device_measurements(cuff.device_type)) == list(
        both.device_measurements(cuff.device_type)
    )
    whole = list(both.device_measurements(scale.device_type))
    day_nine = both.day_measurements(scale.device_type, 9)
    assert day_nine and all(m in whole for m in day_nine)
    assert list(both.device_measurements(scale.device_type, first_day=9, end_day=10)) == day_nine


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


# -- behaviour ---------------------------------------------------------------------------------


def _simulations(count, days, behaviour=DEFAULT_BEHAVIOUR, devices=None):
    plans = devices or [DevicePlan("weighing_scale", {"body_weight": 1})]
    return [
        PatientSimulation(
            conditions=[Condition.HEART_FAILURE],
            devices=plans,
            start=date(2026, 1, 5),
            days=days,
            seed=derive(5, i),
            behaviour=behaviour,
        )
        for i in range(count)
    ]


def test_adherence_varies_by_patient_and_declines_over_the_weeks():
    simulations = _simulations(300, 84)
    active = np.array([s.active_days for s in simulations])
    first_days, last_fortnight = active[:, :3].mean(), active[:, -14:].mean()
    assert first_days >= 0.85
    assert first_days - last_fortnight >= 0.15
    assert active[:, :14].mean() - last_fortnight >= 0.05
    per_patient = active.mean(axis=1)
    assert per_patient.std() >= 0.08
    assert 0.0 < (per_patient == 0).mean() < 0.1  # a few never start
    # what the patient did is what the device records
    for simulation in simulations[:30]:
        days = {
            (m.taken_at.astimezone(PILOT_ZONE).date() - simulation.start).days
            for m in simulation.device_measurements("weighing_scale")
        }
        assert days <= set(np.flatnonzero(simulation.active_days))


@pytest.mark.parametrize(
    ("late_share", "low", "high"), [(0.0, 0.0, 0.01), (0.08, 0.04, 0.12), (0.3, 0.2, 0.35)]
)
def test_forgotten_readings_are_taken_later_the_same_day(late_share, low, high):
    behaviour = DEFAULT_BEHAVIOUR.with_overrides({"late_share_mean": late_share})
    late = total = 0
    for simulation in _simulations(60, 30, behaviour):
        (slot,) = slot_hours("weighing_scale", 1, simulation.physiology.baseline)
        habit = slot.hour + simulation.adherence.habit_offset_minutes / 60
        for m in simulation.device_measurements("weighing_scale"):
            local = m.taken_at.astimezone(PILOT_ZONE)
            total += 1
            late += local.hour + local.minute / 60 - habit > 1.25
    assert low <= late / total <= high


def test_measurements_follow_the_care_plan_schedule():
    """Twice a day means a morning and an evening cluster; the glucometer's first reading of
    the day is before breakfast."""
    plans = [
        DevicePlan("blood_pressure_monitor", {"bp_systolic": 2, "bp_diastolic": 2}),
        DevicePlan("glucometer", {"blood_glucose": 3}),
    ]
    behaviour = DEFAULT_BEHAVIOUR.with_overrides(FULL_ADHERENCE)
    for simulation in _simulations(20, 10, behaviour, plans):
        cuff_days = Counter(
            m.taken_at.astimezone(PILOT_ZONE).date()
            for m in simulation.device_measurements("blood_pressure_monitor")
        )
        assert set(cuff_days.values()) == {2}
        breakfast = simulation.physiology.baseline.breakfast_hour
        for day in range(10):
            readings = simulation.day_measurements("glucometer", day)
            assert len(readings) == 3
            first = readings[0].taken_at.astimezone(PILOT_ZONE)
            assert first.hour + first.minute / 60 < breakfast + 0.5


def test_the_tracker_reports_daily_steps_and_samples_vital_signs():
    plans = [DevicePlan("activity_tracker", {"steps": 1})]
    (simulation,) = _simulations(1, 7, DEFAULT_BEHAVIOUR.with_overrides(FULL_ADHERENCE), plans)
    for day in range(7):
        readings = simulation.day_measurements("activity_tracker", day)
        steps = [m for m in readings if "steps" in m.values]
        assert len(steps) == 1 and steps[0] is readings[-1]
        assert steps[0].taken_at.astimezone(PILOT_ZONE).hour == 23
        samples = readings[:-1]
        assert len(samples) >= 6
        assert all(set(m.values) == {"heart_rate", "respiratory_rate"} for m in samples)


# -- broadband ---------------------------------------------------------------------------------


def test_inner_areas_get_worse_broadband_than_centres():
    profiles = [DEFAULT_CLASS_PROFILES[c] for c in SNAI_CLASSES]
    for better, worse in itertools.pairwise(profiles):
        assert worse.outages_per_week >= better.outages_per_week
        assert worse.outage_median_minutes >= better.outage_median_minutes
        assert worse.latency_median_ms >= better.latency_median_ms
        assert worse.session_drop_probability >= better.session_drop_probability
        assert worse.expected_availability < better.expected_availability
    municipalities = reference()
    balme, torino = municipalities["001019"], municipalities["001272"]
    inner = connectivity_profile(balme.snai_class, balme.travel_time_minutes)
    centre = connectivity_profile(torino.snai_class, torino.travel_time_minutes)
    assert inner.expected_availability < 0.99
    assert centre.expected_availability > 0.999
    # within a class, farther from the pole is a little worse, within bounds
    near, far = connectivity_profile("E", 42.2), connectivity_profile("E", 64.0)
    assert (
        near.outages_per_week
        < far.outages_per_week
        <= 1.5 * DEFAULT_CLASS_PROFILES["E"].outages_per_week
    )


def test_a_schedule_matches_its_profile_over_a_long_run():
    profile = DEFAULT_CLASS_PROFILES["E"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    schedule = outage_schedule(profile, 42, start, start + timedelta(days=730))
    weeks = 730 / 7
    assert (
        abs(len(schedule.outages) / weeks - profile.outages_per_week)
        < 0.15 * profile.outages_per_week
    )
    assert abs(schedule.availability - profile.expected_availability) < 0.005
    assert (
        outage_schedule(profile, 42, start, start + timedelta(days=730)).outages == schedule.outages
    )
    assert (
        outage_schedule(profile, 43, start, start + timedelta(days=730)).outages != schedule.outages
    )
    latencies = [profile.latency_seconds(np.random.default_rng(i)) for i in range(2000)]
    assert abs(np.median(latencies) - profile.latency_median_ms / 1000) < 0.01


profiles_strategy = st.builds(
    ConnectivityProfile,
    outages_per_week=st.floats(0, 50),
    outage_median_minutes=st.floats(0.1, 600),
    outage_sigma=st.floats(0, 2),
    outage_max_hours=st.floats(0.01, 72),
    latency_median_ms=st.floats(0, 1000),
    latency_sigma=st.floats(0, 2),
    session_drop_probability=st.floats(0, 1),
)


@settings(max_examples=100, deadline=None)
@given(
    profile=profiles_strategy,
    seed=st.integers(0, 2**63),
    start=st.datetimes(datetime(2025, 1, 1), datetime(2028, 1, 1), timezones=st.just(UTC)),
    days=st.floats(0, 60),
    probes=st.lists(st.floats(-0.1, 1.1), max_size=30),
    forced=st.lists(st.tuples(st.floats(-0.2, 1.2), st.floats(0, 0.3)), max_size=3),
)
def test_outage_schedules_are_well_formed(  # noqa: PLR0917 - hypothesis
    profile, seed, start, days, probes, forced
):
    end = start + timedelta(days=days)
    span = end - start
    extra = [Outage(start + span * a, start + span * a + span * b) for a, b in forced]
    schedule = outage_schedule(profile, seed, start, end).with_outages(extra)
    previous_end = None
    for outage in schedule.outages:
        assert start <= outage.start < outage.end <= end
        assert previous_end is None or previous_end < outage.start  # sorted, disjoint, merged
        assert outage.duration <= timedelta(hours=profile.outage_max_hours) or extra
        previous_end = outage.end
    for fraction in probes:
        t = start + span * fraction
        down = [o for o in schedule.outages if o.start <= t < o.end]
        assert schedule.is_up(t) == (not down)
        up_at = schedule.next_up(t)
        assert schedule.is_up(up_at) and up_at >= t
        assert up_at == (down[0].end if down else t)
        following = schedule.next_outage(t)
        later = [o for o in schedule.outages if o.end > t]
        assert following == (later[0] if later else None)
    assert 0.0 <= schedule.availability <= 1.0


def test_the_scenario_sets_each_municipality_s_broadband():
    scenario = load_scenario(EXAMPLE_SCENARIO, reference())
    schedules = outage_schedules(scenario)
    patients = simulated_patients(scenario)
    assert set(schedules) == {p.municipality for p in patients}
    ala = schedules["001003"]  # the example forces a 10-hour outage there
    snowstorm = datetime(2026, 2, 14, 5, 0, tzinfo=UTC)
    assert not ala.is_up(snowstorm + timedelta(hours=5))
    assert ala.next_up(snowstorm) >= snowstorm + timedelta(hours=10)
    assert municipality_profile(scenario, "001019").outages_per_week > 2.0  # class F override
    assert schedules["001272"].availability > schedules["001003"].availability


# -- scenarios ---------------------------------------------------------------------------------


def test_the_example_scenario_loads_and_expands():
    scenario = load_scenario(EXAMPLE_SCENARIO, reference())
    patients = simulated_patients(scenario)
    assert len(patients) == 200
    assert len({p.patient_id for p in patients}) == 200
    classes = Counter(p.snai_class for p in patients)
    assert classes["A"] + classes["B"] >= 40 and classes["D"] + classes["E"] + classes["F"] >= 60
    assert scenario.file.period.days == 30
    for patient in patients:
        assert patient.municipality in scenario.municipalities
        merged: dict[str, int] = {}
        for device in patient.devices:
            assert device.device_type in scenario.startup(device.startup).device_types
            assert set(device.care_plan) <= DEVICE_TYPES[device.device_type].metrics
            merged.update(device.care_plan)
        assert merged == dict(patient.care_plan)
        assert scenario.first_day <= patient.enrolment_start < scenario.end_day
    first_day = [
        m
        for m in pilot_measurements(scenario, patients[:20])
        if m.taken_at < scenario.starts_at + timedelta(days=1)
    ]
    assert first_day and all(a.taken_at <= b.taken_at for a, b in itertools.pairwise(first_day))


def test_device_traits_follow_their_start_up_settings():
    startups = copy.deepcopy(example_document()["startups"])
    for startup in startups:
        startup["devices"] = {
            "clock_drift_ppm": [-30.0, 10.0],
            "bad_clock_share": 0.5,
            "battery_life_days": [10.0, 20.0],
        }
    scenario = scenario_with(startups=startups)
    devices = [d for p in simulated_patients(scenario) for d in p.devices]
    assert all(-30 <= d.traits.clock_drift_ppm <= 10 for d in devices)
    assert all(10 <= d.traits.battery_life_days <= 20 for d in devices)
    bad = sum(d.traits.clock_offset_s != 0 for d in devices) / len(devices)
    assert 0.4 <= bad <= 0.6
    assert len({d.traits.fault_seed for d in devices}) == len(devices)
    default = load_scenario(EXAMPLE_SCENARIO, reference())
    for patient in simulated_patients(default):
        for device in patient.devices:
            if device.startup == "Alpi Digital Health":  # the defaults: ±20 ppm, 2% bad clocks
                assert abs(device.traits.clock_drift_ppm) <= 20


@pytest.mark.parametrize(
    ("care_plan", "devices"),
    [
        (
            {"bp_systolic": 2, "heart_rate": 2},
            {"blood_pressure_monitor": {"bp_systolic": 2, "heart_rate": 2}},
        ),
        ({"spo2": 2, "heart_rate": 1}, {"pulse_oximeter": {"spo2": 2, "heart_rate": 1}}),
        ({"steps": 1, "heart_rate": 3}, {"activity_tracker": {"steps": 1, "heart_rate": 3}}),
        ({"heart_rate": 1}, {"blood_pressure_monitor": {"heart_rate": 1}}),
        (
            {"body_weight": 1, "spo2": 2, "bp_systolic": 1, "heart_rate": 2},
            {
                "blood_pressure_monitor": {"bp_systolic": 1, "heart_rate": 2},
                "pulse_oximeter": {"spo2": 2},
                "weighing_scale": {"body_weight": 1},
            },
        ),
    ],
)
def test_care_plans_are_split_over_devices(care_plan, devices):
    assert assign_devices(care_plan) == devices


def _mutate(path, value):
    def apply(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return document

    return apply


_DELETE = object()


def _only_the_first_startup(document):
    document["startups"] = document["startups"][:1]
    return document


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _mutate(["municipalities", 0, "istat_code"], "001999"),
            "unknown municipality ISTAT code '001999'",
        ),
        (_mutate(["municipalities", 0, "istat_code"], "1003"), "municipalities.0.istat_code"),
        (_mutate(["municipalities", 1, "istat_code"], "001272"), "001272 is listed twice"),
        (_mutate(["broadband", "outages", 0, "municipality"], "009999"), "'009999'"),
        (_mutate(["conditions", 0, "share"], 0.5), "shares must sum to 1"),
        (_mutate(["conditions", 0, "conditions"], ["gout"]), "conditions.0.conditions.0"),
        (_mutate(["care_plans", "diabetes"], _DELETE), "condition diabetes has no care plan"),
        (_mutate(["care_plans", "diabetes"], {"blood_sugar": 3}), "unknown metric(s) blood_sugar"),
        (
            _mutate(["care_plans", "diabetes", "blood_glucose"], 0),
            "care_plans.diabetes.blood_glucose",
        ),
        (
            _only_the_first_startup,
            "no start-up offers glucometer, needed by the care plan of diabetes",
        ),
        (_mutate(["startups", 0, "device_types"], ["toaster"]), "unknown device type(s) toaster"),
        (
            _mutate(["startups", 1, "devices", "faults", "duplicate"], 1.0),
            "fault shares are exclusive",
        ),
        (
            _mutate(["startups", 1, "devices", "clock_drift_ppm"], [40.0, -40.0]),
            "a range is [low, high]",
        ),
        (_mutate(["snai_mix", 0, "municipalities"], 500), "class C has"),
        (_mutate(["snai_mix", 0, "snai_class"], "G"), "snai_mix.0.snai_class"),
        (_mutate(["period", "days"], 0), "period.days"),
        (_mutate(["period", "enrolment_spread_days"], 30), "shorter than the period"),
        (_mutate(["episode_rates"], {"plague": 1.0}), "unknown episode kind 'plague'"),
        (_mutate(["behaviour"], {"patience": 1.0}), "unknown behaviour setting(s) patience"),
        (
            _mutate(["broadband", "classes", "F"], {"bandwidth": 1.0}),
            "unknown broadband setting(s) bandwidth",
        ),
        (
            _mutate(["broadband", "municipalities"], {"001003": {"speed": 1.0}}),
            "unknown broadband setting(s) speed",
        ),
        (_mutate(["colour"], "blue"), "colour: Extra inputs are not permitted"),
        (_mutate(["seed"], _DELETE), "seed: Field required"),
    ],
)
def test_scenario_errors_say_what_is_wrong(change, message):
    document = change(copy.deepcopy(example_document()))
    with pytest.raises(InvalidInputError) as raised:
        parse_scenario(document, reference(), source="pilot.toml")
    assert message in str(raised.value)
    assert str(raised.value).startswith("scenario pilot.toml: ")


def test_a_scenario_file_that_is_not_toml_is_refused(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "unterminated\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        load_scenario(broken, reference())
    with pytest.raises(InvalidInputError, match="cannot read it"):
        load_scenario(tmp_path / "missing.toml", reference())


def test_episode_bounds_and_burn_in():
    """Episodes under way at the start exist (drawn from before the period)."""
    physiology = PatientPhysiology(list(Condition), derive(1), date(2026, 1, 1), 30)
    assert all(e.end > -BURN_IN_DAYS and e.start < 30 for e in physiology.episodes)
    for episode in physiology.episodes:
        start, end = physiology.episode_bounds(episode)
        assert start < end
