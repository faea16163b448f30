"""What the tests of the economic model share: places as (latitude, longitude) copied from the
shipped reference data, the haversine formula written out independently of the module
(`great_circle_km`), round parameters for hand arithmetic (`params`) and a group's inputs
(`inputs`)."""

from __future__ import annotations

import math

import numpy as np

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.evaluation.economic_parameters import EconomicParameters
from ehealthlab.evaluation.economics import EconomicInputs

# (latitude, longitude) as in cmto_municipalities.csv / snai_reference_poles_outside_cmto.csv
ALA_DI_STURA = (45.31515, 7.305909)  # 001003, class E, pole Collegno, 58 min
COLLEGNO = (45.077547, 7.572426)  # 001090, its own pole
TORINO = (45.067755, 7.682489)  # 001272, its own pole
PANCALIERI = (44.833441, 7.585924)  # 001178, pole Savigliano, 25 min
VILLAFRANCA = (44.778939, 7.500424)  # 001300, pole Savigliano, 21.8 min
SAVIGLIANO = (44.644037, 7.655929)  # 004215, province of Cuneo
MILANO = (45.4642, 9.1900)  # city centre, approximately (not in the reference data)


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The haversine formula written out, independently of the module."""
    phi1, phi2 = math.radians(a[0]), math.radians(b[0])
    dphi, dlam = phi2 - phi1, math.radians(b[1] - a[1])
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def params(**changes: object) -> EconomicParameters:
    """Round parameters for hand arithmetic, independent of the shipped defaults."""
    document: dict[str, object] = {
        "visits_per_month": 1.0,
        "road_factor": 1.3,
        "co2_kg_per_km": 0.170,
        "amortisation_months": 36,
        "connectivity_eur_per_patient_month": 5.0,
        "staff_minutes_per_alert": 12.0,  # x 30 EUR/h = 6 EUR an alert
        "staff_eur_per_hour": 30.0,
        "platform_eur_per_month": 900.0,
        "visit_tariff_eur": 25.0,
        "public_travel_eur_per_km": 0.0,
        "device_price_eur": dict.fromkeys(DEVICE_TYPES, 72.0),  # 72 / 36 = 2 EUR a month
    }
    document.update(changes)
    return EconomicParameters.model_validate(document)


def inputs(
    days: list[float],
    municipalities: list[str],
    device_days: dict[str, float] | None = None,
    *,
    alerts: int = 0,
    period_days: float = 30.0,
    platform_share: float = 1.0,
) -> EconomicInputs:
    return EconomicInputs(
        patient_days=np.array(days, dtype=np.float64),
        municipalities=municipalities,
        device_days=device_days or {},
        alerts=alerts,
        period_days=period_days,
        platform_share=platform_share,
    )
