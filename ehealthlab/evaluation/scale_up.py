"""The scale-up projection: the service extended to every municipality of each SNAI class.

From what the pilot observed in a class (reach, adherence, cost per patient-month) to what
the service would cost and avoid per year if every municipality of the class had it. The
report shows the formulas below as they are written here, so the text is the code's own.

Scale-up projection, per SNAI class k, per year (12 months), with the reach r_k (patients per
1,000 residents), adherence a_k and cost per patient-month c_k observed in the class, P_m the
population of municipality m of the class, d_m its haversine km to its pole and t_m its SNAI
travel minutes:

- patients_k = r_k x sum_m P_m / 1000 (the observed reach, applied to every municipality);
- patient_months_k = 12 x patients_k;
- visits_k = patient_months_k x visits_per_month x a_k;
- km_k = 2 x road_factor x sum_m (r_k x P_m / 1000) x 12 x visits_per_month x a_k x d_m,
  hours_k likewise with t_m / 60 and no road factor, co2_k = km_k x co2_kg_per_km;
- cost_k = patient_months_k x c_k;
- avoided_eur_k = visits_k x visit_tariff_eur + km_k x public_travel_eur_per_km.

Adherence discounts only what is avoided: a visit counts as replaced on the share of days the
patient actually sent every planned measurement, while costs run on every enrolled month. The
observed `visits_avoided` does not discount (the spec counts every enrolled day), so the
projection is the more cautious of the two. c_k includes the platform share observed in the
class, which the projection scales with patients although the platform's cost is fixed: the
projected cost is an upper bound. A class without an observation is reported as not
projected, with the reason; nothing is invented for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.economic_parameters import EconomicParameters
from ehealthlab.evaluation.snai_reference import (
    SNAI_CLASSES,
    Municipality,
    PoleDistances,
    reference_municipalities,
)


class ClassObservation(NamedTuple):
    """What the pilot observed in one SNAI class; a field is None when it was not observed."""

    reach_per_1000: float | None
    adherence: float | None
    cost_per_patient_month: float | None


@dataclass(frozen=True)
class ScaleUpProjection:
    """One SNAI class extended to all its municipalities, per year: the inputs, then either
    the projected figures or, when `projected` is False, the `reason` and None figures."""

    snai_class: str
    municipalities: int
    population: int
    reach_per_1000: float | None
    adherence: float | None
    cost_per_patient_month: float | None
    projected: bool
    reason: str | None = None
    patients: float | None = None
    patient_months_per_year: float | None = None
    visits_avoided_per_year: float | None = None
    travel_km_avoided_per_year: float | None = None
    travel_hours_avoided_per_year: float | None = None
    co2_kg_avoided_per_year: float | None = None
    cost_eur_per_year: float | None = None
    avoided_eur_per_year: float | None = None


def _check_observation(snai_class: str, observed: ClassObservation) -> None:
    for name, value, high in (
        ("reach_per_1000", observed.reach_per_1000, 1000.0),
        ("adherence", observed.adherence, 1.0),
        ("cost_per_patient_month", observed.cost_per_patient_month, math.inf),
    ):
        if value is not None and not (math.isfinite(value) and 0 <= value <= high):
            raise InvalidInputError(
                f"scale-up: class {snai_class} {name} = {value!r} is not a number in [0, {high}]"
            )


def scale_up_projection(
    params: EconomicParameters,
    distances: PoleDistances,
    observed_by_class: Mapping[
        str, ClassObservation | tuple[float | None, float | None, float | None] | None
    ],
    municipalities: Sequence[Municipality] | None = None,
) -> list[ScaleUpProjection]:
    """Every SNAI class A-F, in order, projected per year as the module docstring says, from
    the class's observation (reach per 1,000, adherence, cost per patient-month) and its
    municipalities (the shipped reference when None)."""
    unknown = sorted(set(observed_by_class) - set(SNAI_CLASSES))
    if unknown:
        raise InvalidInputError(f"scale-up: unknown SNAI class {', '.join(unknown)} (A-F)")
    reference = reference_municipalities() if municipalities is None else municipalities
    out = []
    for snai_class in SNAI_CLASSES:
        members = [m for m in reference if m.snai_class == snai_class]
        raw = observed_by_class.get(snai_class)
        observed = ClassObservation(*raw) if raw is not None else ClassObservation(None, None, None)
        _check_observation(snai_class, observed)
        base = ScaleUpProjection(
            snai_class=snai_class,
            municipalities=len(members),
            population=sum(m.population for m in members),
            reach_per_1000=observed.reach_per_1000,
            adherence=observed.adherence,
            cost_per_patient_month=observed.cost_per_patient_month,
            projected=False,
        )
        reach, adherence, cost = observed
        missing = [name for name, value in observed._asdict().items() if value is None]
        if raw is None:
            reason: str | None = f"no patient of class {snai_class} observed"
        elif missing:
            reason = f"not observed in class {snai_class}: {', '.join(missing)}"
        elif not members:
            reason = f"no municipality of class {snai_class} in the reference data"
        else:
            reason = None
        if reason is not None or reach is None or adherence is None or cost is None:
            out.append(replace(base, reason=reason))
        else:
            out.append(
                _project(
                    params,
                    distances,
                    base,
                    members=members,
                    reach=reach,
                    adherence=adherence,
                    cost_per_patient_month=cost,
                )
            )
    return out


def _project(
    params: EconomicParameters,
    distances: PoleDistances,
    base: ScaleUpProjection,
    *,
    members: Sequence[Municipality],
    reach: float,
    adherence: float,
    cost_per_patient_month: float,
) -> ScaleUpProjection:
    km_to_pole, minutes_to_pole = distances.lookup([m.istat_code for m in members])
    population = np.array([m.population for m in members], dtype=np.float64)
    patients_by_municipality = reach * population / 1000
    visits_by_municipality = patients_by_municipality * 12 * params.visits_per_month * adherence
    patients = float(patients_by_municipality.sum())
    visits = float(visits_by_municipality.sum())
    km = float(visits_by_municipality @ km_to_pole) * 2 * params.road_factor
    hours = float(visits_by_municipality @ minutes_to_pole) * 2 / 60
    return replace(
        base,
        projected=True,
        patients=patients,
        patient_months_per_year=12 * patients,
        visits_avoided_per_year=visits,
        travel_km_avoided_per_year=km,
        travel_hours_avoided_per_year=hours,
        co2_kg_avoided_per_year=km * params.co2_kg_per_km,
        cost_eur_per_year=12 * patients * cost_per_patient_month,
        avoided_eur_per_year=visits * params.visit_tariff_eur
        + km * params.public_travel_eur_per_km,
    )
