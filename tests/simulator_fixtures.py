"""What the tests of the simulator share.

The device simulators': a moment to measure at, and each device type's typical readings with
what the store must hold of them (`TYPICAL`), written by the pure payload tests and sent
through the real platform.

The models': the example scenario, read once, and variants of it (`scenario_with`,
`one_municipality`), and the behaviour of patients who never miss a reading.
"""

from __future__ import annotations

import copy
import tomllib
from datetime import UTC, date, datetime
from functools import cache

from ehealthlab.simulators.scenario import (
    EXAMPLE_SCENARIO,
    parse_scenario,
    reference_municipalities,
)

# -- the device simulators: a moment and each type's typical readings ---------------------

T0 = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


#: (device type, units it is set to, true values, what the store must hold in canonical units)
TYPICAL = [
    ("blood_pressure_monitor", {}, {"bp_systolic": 142.4, "bp_diastolic": 91.2,
     "heart_rate": 72.0}, {"bp_systolic": 142, "bp_diastolic": 91, "heart_rate": 72}),
    ("pulse_oximeter", {}, {"spo2": 96.6, "heart_rate": 80.4}, {"spo2": 97, "heart_rate": 80}),
    ("weighing_scale", {}, {"body_weight": 81.26}, {"body_weight": 81.3}),
    ("thermometer", {}, {"body_temperature": 37.84}, {"body_temperature": 37.8}),
    ("glucometer", {}, {"blood_glucose": 131.6}, {"blood_glucose": 132}),
    ("activity_tracker", {}, {"steps": 4321.0, "heart_rate": 64.2, "respiratory_rate": 15.4},
     {"steps": 4321, "heart_rate": 64, "respiratory_rate": 15}),
    ("multiparameter_monitor", {}, {"bp_systolic": 120.0, "spo2": 98.0, "body_weight": 70.0,
     "blood_glucose": 95.0, "body_temperature": 36.6, "steps": 10.0},
     {"bp_systolic": 120, "spo2": 98, "body_weight": 70, "blood_glucose": 95,
      "body_temperature": 36.6, "steps": 10}),
    # devices set to another accepted unit: the platform converts
    ("glucometer", {"blood_glucose": "mmol/L"}, {"blood_glucose": 131.6},
     {"blood_glucose": 7.3 * 18.016}),
    ("weighing_scale", {"body_weight": "[lb_av]"}, {"body_weight": 81.26},
     {"body_weight": 179.2 * 0.45359237}),
    ("thermometer", {"body_temperature": "[degF]"}, {"body_temperature": 37.84},
     {"body_temperature": (100.1 - 32) * 5 / 9}),
    ("blood_pressure_monitor", {"bp_systolic": "kPa", "bp_diastolic": "kPa"},
     {"bp_systolic": 142.4, "bp_diastolic": 91.2}, {"bp_systolic": 19.0 * 7.50062,
     "bp_diastolic": 12.2 * 7.50062}),
]  # fmt: skip


# -- the models: the example scenario and variants of it ---------------------------------

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
