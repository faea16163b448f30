"""Care plans and the devices that carry them out.

Pure rules shared by the scenario file's validation (every device a care plan needs must be
offered by a start-up) and the patients' expansion: several conditions' plans combine into
one, and a plan's metrics are split over the device types that measure them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ehealthlab.simulators.conditions import Condition

#: which device type serves each planned metric (heart rate: see `assign_devices`)
METRIC_DEVICE: Mapping[str, str] = MappingProxyType(
    {
        "bp_systolic": "blood_pressure_monitor",
        "bp_diastolic": "blood_pressure_monitor",
        "spo2": "pulse_oximeter",
        "body_weight": "weighing_scale",
        "body_temperature": "thermometer",
        "blood_glucose": "glucometer",
        "steps": "activity_tracker",
        "respiratory_rate": "activity_tracker",
    }
)
_HEART_RATE_DEVICES = ("blood_pressure_monitor", "pulse_oximeter", "activity_tracker")


def combined_care_plan(
    conditions: Sequence[Condition], care_plans: Mapping[Condition, Mapping[str, int]]
) -> dict[str, int]:
    """One plan for several conditions: each metric at its highest frequency."""
    plan: dict[str, int] = {}
    for condition in conditions:
        for metric, per_day in care_plans[condition].items():
            plan[metric] = max(plan.get(metric, 0), per_day)
    return dict(sorted(plan.items()))


def assign_devices(care_plan: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Split a care plan over device types (device type -> its part of the plan).

    Heart rate goes to a cuff, else an oximeter, else a tracker the patient already has,
    else to a cuff of its own.
    """
    devices: dict[str, dict[str, int]] = {}
    for metric, per_day in care_plan.items():
        if metric in METRIC_DEVICE:
            devices.setdefault(METRIC_DEVICE[metric], {})[metric] = per_day
    if "heart_rate" in care_plan:
        holder = next((d for d in _HEART_RATE_DEVICES if d in devices), _HEART_RATE_DEVICES[0])
        devices.setdefault(holder, {})["heart_rate"] = care_plan["heart_rate"]
    return dict(sorted(devices.items()))
