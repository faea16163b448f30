"""The simulator's patients' behaviour, pure: adherence varies by patient and declines over
the weeks, forgotten readings are taken later the same day, measurements follow the care
plan's schedule, and the tracker reports daily steps and samples vital signs."""

from __future__ import annotations

from collections import Counter
from datetime import date

import numpy as np
import pytest
from simulator_fixtures import FULL_ADHERENCE

from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.simulators.behaviour import (
    DEFAULT_BEHAVIOUR,
    DevicePlan,
    PatientSimulation,
    slot_hours,
)
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.seeds import derive

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
