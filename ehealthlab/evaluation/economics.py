"""The pilot's economic model (indicators.md v1.1, "Economic sustainability"), as pure code.

The evaluation core calls `compute_economics` once per group with the group's patient-days,
municipalities, device-days and alerts; nothing here touches the store. The parameters live
in `economics.toml` (shipped defaults, each marked SPEC or ASSUMPTION); distances come from
the shipped municipality reference data plus the one SNAI pole outside the Metropolitan City.

Per group (months are 30 days):

- visits avoided per patient = patient_days / 30 x visits_per_month
- travel_km_avoided = sum visits x 2 x haversine(municipality, pole) x road_factor
- travel_hours_avoided = sum visits x 2 x snai_travel_time_min / 60
- co2_kg_avoided = travel_km_avoided x co2_kg_per_km
- cost_per_patient_month = (devices + connectivity + staff + platform share) / patient-months,
  where devices = sum over types of price / amortisation_months x device_days / 30,
  connectivity = connectivity_eur_per_patient_month x patient-months,
  staff = alerts x staff_minutes_per_alert / 60 x staff_eur_per_hour, and the platform share
  = platform_eur_per_month x period_days / 30 x `platform_share`: the part of the platform's
  running cost over the period that the group carries (1 for the whole population; for a
  sub-group the core passes its share of the population's patient-months, so that the groups'
  costs add up to the total instead of each carrying the whole platform).
- break_even_patients = platform_eur_per_month / (avoided - variable), both per patient-month
  as observed in the group: avoided = (visits x visit_tariff_eur + road km x
  public_travel_eur_per_km) / patient-months, variable = (devices + connectivity + staff) /
  patient-months. With N patients enrolled all month, N x (avoided - variable) is what the
  service saves the public purse each month before its fixed cost, so break-even is the N at
  which it equals the platform's cost. `None` when avoided never exceeds variable cost (no N
  breaks even) or the group has no patient-months. A fraction, not rounded up.

An indicator with an empty denominator is `None`, never 0; sums over no patients are 0.

The parameters are read in economic_parameters.py, the municipalities, poles and distances
in snai_reference.py; the projection to every municipality of a SNAI class is scale_up.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.economic_parameters import EconomicParameters
from ehealthlab.evaluation.snai_reference import FloatArray, PoleDistances

#: days in a month, everywhere in indicators.md
DAYS_PER_MONTH: Final = 30.0
#: the indicator ids compute_economics returns, in the spec's order
INDICATOR_IDS: Final = (
    "visits_avoided",
    "travel_km_avoided",
    "travel_hours_avoided",
    "co2_kg_avoided",
    "cost_per_patient_month",
    "break_even_patients",
)


@dataclass(frozen=True, eq=False)
class EconomicInputs:
    """What one group contributes to the economic model.

    `patient_days` and `municipalities` are parallel, one entry per patient of the group (the
    patient's municipality as indicators.md assigns it). `device_days` maps a device type to
    the enrolled device-days of the group's devices of that type. `platform_share` is the part
    of the platform's running cost the group carries: 1 for the whole population, the group's
    share of the population's patient-months for a sub-group (see the module docstring).
    """

    patient_days: FloatArray
    municipalities: Sequence[str]
    device_days: Mapping[str, float]
    alerts: int
    period_days: float
    platform_share: float = 1.0

    def __post_init__(self) -> None:
        days = np.asarray(self.patient_days, dtype=np.float64)
        object.__setattr__(self, "patient_days", days)
        if days.ndim != 1 or days.size != len(self.municipalities):
            raise InvalidInputError(
                f"economic inputs: {days.size} patient-day counts for "
                f"{len(self.municipalities)} municipalities; one of each per patient"
            )
        if not bool(np.all(np.isfinite(days) & (days >= 0))):
            raise InvalidInputError("economic inputs: patient_days must be finite and >= 0")
        unknown = sorted(set(self.device_days) - set(DEVICE_TYPES))
        if unknown:
            raise InvalidInputError(
                f"economic inputs: device_days names unknown device types: {', '.join(unknown)}"
            )
        for name, value in (
            *((f"device_days[{t!r}]", v) for t, v in self.device_days.items()),
            ("alerts", self.alerts),
            ("period_days", self.period_days),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"economic inputs: {name} must be finite and >= 0")
        if not 0 <= self.platform_share <= 1:
            raise InvalidInputError("economic inputs: platform_share must lie in [0, 1]")


def compute_economics(
    params: EconomicParameters, distances: PoleDistances, inputs: EconomicInputs
) -> dict[str, float | None]:
    """The economic indicators of one group (ids as in indicators.md), by the formulas of the
    module docstring."""
    km_to_pole, minutes_to_pole = distances.lookup(inputs.municipalities)
    visits = inputs.patient_days / DAYS_PER_MONTH * params.visits_per_month
    visits_avoided = float(visits.sum())
    km = float(visits @ km_to_pole) * 2 * params.road_factor
    hours = float(visits @ minutes_to_pole) * 2 / 60
    patient_months = float(inputs.patient_days.sum()) / DAYS_PER_MONTH

    devices_eur = sum(
        (
            params.device_price_eur[t] / params.amortisation_months * (days / DAYS_PER_MONTH)
            for t, days in inputs.device_days.items()
        ),
        0.0,
    )
    connectivity_eur = params.connectivity_eur_per_patient_month * patient_months
    staff_eur = inputs.alerts * params.staff_minutes_per_alert / 60 * params.staff_eur_per_hour
    platform_eur = (
        params.platform_eur_per_month * inputs.period_days / DAYS_PER_MONTH * inputs.platform_share
    )
    variable_eur = devices_eur + connectivity_eur + staff_eur
    avoided_eur = visits_avoided * params.visit_tariff_eur + km * params.public_travel_eur_per_km

    cost_per_patient_month: float | None = None
    break_even: float | None = None
    if patient_months > 0:
        cost_per_patient_month = (variable_eur + platform_eur) / patient_months
        margin = (avoided_eur - variable_eur) / patient_months
        if margin > 0:
            break_even = params.platform_eur_per_month / margin
    return {
        "visits_avoided": visits_avoided,
        "travel_km_avoided": km,
        "travel_hours_avoided": hours,
        "co2_kg_avoided": km * params.co2_kg_per_km,
        "cost_per_patient_month": cost_per_patient_month,
        "break_even_patients": break_even,
    }
