"""The simulator's scenarios, pure: seeded runs are reproducible and each patient's stream
independent of the others; the example scenario loads and expands; device traits follow
their start-up's settings, care plans are split over devices, and a wrong scenario file says
what is wrong.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from datetime import date, timedelta

import pytest
from simulator_fixtures import (
    FULL_ADHERENCE,
    example_document,
    one_municipality,
    reference,
    scenario_with,
)

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.behaviour import DEFAULT_BEHAVIOUR, DevicePlan, PatientSimulation
from ehealthlab.simulators.care_plans import assign_devices
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.measurement_stream import pilot_measurements
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.scenario import EXAMPLE_SCENARIO, load_scenario, parse_scenario
from ehealthlab.simulators.seeds import derive


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
