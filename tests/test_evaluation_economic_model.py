"""The economic model against figures worked out by hand here, from the coordinates of the
shipped reference data written into the test and the formulas of indicators.md: one group's
indicators (compute_economics) and the projection of a scale-up by SNAI class."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from economics_fixtures import (
    ALA_DI_STURA,
    COLLEGNO,
    PANCALIERI,
    SAVIGLIANO,
    great_circle_km,
    inputs,
    params,
)

from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.economic_parameters import EconomicParameters, load_parameters
from ehealthlab.evaluation.economics import INDICATOR_IDS, EconomicInputs, compute_economics
from ehealthlab.evaluation.scale_up import ClassObservation, scale_up_projection
from ehealthlab.evaluation.snai_reference import (
    EARTH_RADIUS_KM,
    Municipality,
    build_pole_distances,
    pole_distances,
    reference_municipalities,
)

# --- One group ----------------------------------------------------------------------------

ALA_KM = great_circle_km(ALA_DI_STURA, COLLEGNO)  # about 33.677
PANCALIERI_KM = great_circle_km(PANCALIERI, SAVIGLIANO)

# Ala di Stura 30 days (1 visit), Torino 60 days (2 visits, 0 km: Torino is its own pole);
# 3 patient-months; blood pressure monitors 90 device-days = 3 device-months x 2 EUR = 6;
# connectivity 3 x 5 = 15; 2 alerts x 6 = 12; platform 900 over 30 days: costs 933.
# Avoided 3 visits x 25 = 75, i.e. 25 a patient-month; variable (6 + 15 + 12) / 3 = 11.
TWO_PATIENTS = {
    "visits_avoided": 3.0,
    "travel_km_avoided": 1 * 2 * ALA_KM * 1.3 + 2 * 2 * 0.0 * 1.3,
    "travel_hours_avoided": 1 * 2 * 58 / 60 + 2 * 2 * 0 / 60,
    "co2_kg_avoided": 1 * 2 * ALA_KM * 1.3 * 0.170,
    "cost_per_patient_month": 933 / 3,
    "break_even_patients": 900 / (25 - 11),
}

CASES = [
    (
        "Ala di Stura and Torino",
        params(),
        inputs(
            [30.0, 60.0],
            ["001003", "001272"],
            {"blood_pressure_monitor": 90.0},
            alerts=2,
        ),
        TWO_PATIENTS,
    ),
    (
        # 45 days: 1.5 visits, to Savigliano; 1.5 months of scale and oximeter (2 EUR each a
        # month): 6; connectivity 7.5; platform 900 x 60/30 x 1/4 = 450. Avoided 37.5.
        "Pancalieri, pole outside CMTo, a quarter of the platform",
        params(),
        inputs(
            [45.0],
            ["001178"],
            {"weighing_scale": 45.0, "pulse_oximeter": 45.0},
            period_days=60.0,
            platform_share=0.25,
        ),
        {
            "visits_avoided": 1.5,
            "travel_km_avoided": 1.5 * 2 * PANCALIERI_KM * 1.3,
            "travel_hours_avoided": 1.5 * 2 * 25 / 60,
            "co2_kg_avoided": 1.5 * 2 * PANCALIERI_KM * 1.3 * 0.170,
            "cost_per_patient_month": (6 + 7.5 + 450) / 1.5,
            "break_even_patients": 900 / ((37.5 - 6 - 7.5) / 1.5),
        },
    ),
    (
        # no tariff and no public travel cost: nothing avoided in euros, never breaks even
        "never breaks even",
        params(visit_tariff_eur=0.0),
        inputs([30.0, 60.0], ["001003", "001272"], {"blood_pressure_monitor": 90.0}, alerts=2),
        {**TWO_PATIENTS, "break_even_patients": None},
    ),
    (
        # tariff 11 = variable cost 11 a patient-month: avoided never exceeds it
        "avoided equals variable cost",
        params(visit_tariff_eur=11.0),
        inputs([30.0, 60.0], ["001003", "001272"], {"blood_pressure_monitor": 90.0}, alerts=2),
        {**TWO_PATIENTS, "break_even_patients": None},
    ),
    (
        # tariff 5 alone (5 < 11) does not break even; 0.5 EUR per public road km adds
        # 0.5 x 2 x 33.677 x 1.3 = 43.78 EUR over 3 patient-months
        "public travel cost counted",
        params(visit_tariff_eur=5.0, public_travel_eur_per_km=0.5),
        inputs([30.0, 60.0], ["001003", "001272"], {"blood_pressure_monitor": 90.0}, alerts=2),
        {
            **TWO_PATIENTS,
            "break_even_patients": 900 / ((3 * 5 + 0.5 * 2 * ALA_KM * 1.3 - 33) / 3),
        },
    ),
    (
        # nothing enrolled: sums over no patients are 0, ratios have an empty denominator
        "empty group",
        params(),
        inputs([], [], alerts=0),
        {
            "visits_avoided": 0.0,
            "travel_km_avoided": 0.0,
            "travel_hours_avoided": 0.0,
            "co2_kg_avoided": 0.0,
            "cost_per_patient_month": None,
            "break_even_patients": None,
        },
    ),
    (
        "patients without enrolled days",
        params(),
        inputs([0.0, 0.0], ["001003", "001178"]),
        {
            "visits_avoided": 0.0,
            "travel_km_avoided": 0.0,
            "travel_hours_avoided": 0.0,
            "co2_kg_avoided": 0.0,
            "cost_per_patient_month": None,
            "break_even_patients": None,
        },
    ),
    (
        # two visits a month double everything avoided; costs do not change
        "two visits a month, no platform cost",
        params(visits_per_month=2.0, platform_eur_per_month=0.0),
        inputs([30.0, 60.0], ["001003", "001272"], {"blood_pressure_monitor": 90.0}, alerts=2),
        {
            "visits_avoided": 6.0,
            "travel_km_avoided": 2 * 2 * ALA_KM * 1.3,
            "travel_hours_avoided": 2 * 2 * 58 / 60,
            "co2_kg_avoided": 2 * 2 * ALA_KM * 1.3 * 0.170,
            "cost_per_patient_month": 33 / 3,
            "break_even_patients": 0.0,
        },
    ),
]


@pytest.mark.parametrize(
    ("case", "parameters", "group", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_compute_economics(
    case: str,
    parameters: EconomicParameters,
    group: EconomicInputs,
    expected: dict[str, float | None],
) -> None:
    got = compute_economics(parameters, pole_distances(), group)
    assert tuple(got) == INDICATOR_IDS
    for indicator, value in expected.items():
        if value is None:
            assert got[indicator] is None, indicator
        else:
            assert got[indicator] == pytest.approx(value, rel=1e-12), indicator


def test_the_worked_example_in_round_figures() -> None:
    got = compute_economics(params(), pole_distances(), CASES[0][2])
    assert got["travel_km_avoided"] == pytest.approx(87.56, abs=0.01)
    assert got["travel_hours_avoided"] == pytest.approx(1.93, abs=0.01)
    assert got["cost_per_patient_month"] == 311.0
    assert got["break_even_patients"] == pytest.approx(64.29, abs=0.01)


def test_vectorised_equals_patient_by_patient() -> None:
    rng = np.random.default_rng(10)
    d = pole_distances()
    codes = rng.choice(d.istat_codes, size=500).tolist()
    days = rng.integers(0, 92, size=500).astype(np.float64)
    got = compute_economics(params(), d, inputs(days.tolist(), codes))
    by_code = {m.istat_code: m for m in reference_municipalities()}
    places = {m.istat_code: (m.latitude, m.longitude) for m in reference_municipalities()}
    places["004215"] = SAVIGLIANO
    km = hours = 0.0
    for n, code in zip(days, codes, strict=True):
        m = by_code[code]
        visits = n / 30
        km += visits * 2 * great_circle_km(places[code], places[m.pole_istat_code]) * 1.3
        hours += visits * 2 * m.snai_travel_time_min / 60
    assert got["travel_km_avoided"] == pytest.approx(km, rel=1e-9)
    assert got["travel_hours_avoided"] == pytest.approx(hours, rel=1e-9)


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: inputs([30.0], ["001003", "001272"]), "1 patient-day counts for 2"),
        (lambda: inputs([-1.0], ["001003"]), "patient_days"),
        (lambda: inputs([30.0], ["001003"], {"toaster": 3.0}), "toaster"),
        (lambda: inputs([30.0], ["001003"], {"glucometer": -3.0}), "glucometer"),
        (lambda: inputs([30.0], ["001003"], alerts=-1), "alerts"),
        (lambda: inputs([30.0], ["001003"], platform_share=1.5), "platform_share"),
    ],
)
def test_bad_inputs_are_named(build: object, named: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(named)):
        build()  # type: ignore[operator]


# --- Scale-up -----------------------------------------------------------------------------

# A pole (class A) and two class-D municipalities north of it on its meridian, 0.1 and 0.2
# degrees away: 11.1195 and 22.2390 km.
TOY = [
    Municipality("009001", "Polo", 50_000, "A", 45.0, 7.0, 0.0, "009001"),
    Municipality("009002", "Valle", 1_000, "D", 45.1, 7.0, 20.0, "009001"),
    Municipality("009003", "Monte", 3_000, "D", 45.2, 7.0, 40.0, "009001"),
    Municipality("009004", "Cima", 500, "E", 45.3, 7.0, 60.0, "009001"),
]
DEGREE_KM = 2 * math.pi * EARTH_RADIUS_KM / 360


def test_scale_up_by_hand() -> None:
    # class D: 2 patients per 1,000 -> 2 + 6 = 8 patients, 96 patient-months a year; half
    # adherent -> 12 + 36 = 48 visits; km = 2 x 1.3 x (12 x 0.1 + 36 x 0.2) degrees;
    # hours = 2 x (12 x 20 + 36 x 40) / 60 = 56; cost 96 x 40; avoided 48 x 25.
    distances = build_pole_distances(TOY, [])
    observed = {
        "A": None,
        "B": ClassObservation(1.0, None, 30.0),
        "C": (1.0, 0.9, 30.0),  # observed, but the toy has no class C municipality
        "D": ClassObservation(2.0, 0.5, 40.0),
    }
    got = {p.snai_class: p for p in scale_up_projection(params(), distances, observed, TOY)}
    assert list(got) == ["A", "B", "C", "D", "E", "F"]
    d = got["D"]
    assert (d.projected, d.reason, d.municipalities, d.population) == (True, None, 2, 4_000)
    assert (d.reach_per_1000, d.adherence, d.cost_per_patient_month) == (2.0, 0.5, 40.0)
    assert d.patients == pytest.approx(8)
    assert d.patient_months_per_year == pytest.approx(96)
    assert d.visits_avoided_per_year == pytest.approx(48)
    km = 2 * 1.3 * (12 * 0.1 + 36 * 0.2) * DEGREE_KM
    assert d.travel_km_avoided_per_year == pytest.approx(km)
    assert d.travel_hours_avoided_per_year == pytest.approx(56)
    assert d.co2_kg_avoided_per_year == pytest.approx(km * 0.170)
    assert d.cost_eur_per_year == pytest.approx(96 * 40)
    assert d.avoided_eur_per_year == pytest.approx(48 * 25)

    reasons = {c: got[c].reason for c in "ABCEF"}
    assert reasons == {
        "A": "no patient of class A observed",
        "B": "not observed in class B: adherence",
        "C": "no municipality of class C in the reference data",
        "E": "no patient of class E observed",
        "F": "no patient of class F observed",
    }
    for c in "ABCEF":
        p = got[c]
        assert not p.projected
        assert p.patients is None
        assert p.cost_eur_per_year is None
    assert (got["B"].reach_per_1000, got["B"].cost_per_patient_month) == (1.0, 30.0)
    assert (got["E"].municipalities, got["E"].population) == (1, 500)


def test_scale_up_over_the_shipped_reference() -> None:
    got = scale_up_projection(load_parameters(), pole_distances(), {"F": (10.0, 1.0, 50.0)})
    assert sum(p.population for p in got) == 2_219_206
    assert [p.municipalities for p in got] == [6, 6, 202, 60, 35, 3]
    f = got[-1]
    # Balme, Ceresole Reale, Usseglio: 477 residents -> 4.77 patients
    assert f.projected
    assert f.patients == pytest.approx(4.77)
    assert f.visits_avoided_per_year == pytest.approx(4.77 * 12)


@pytest.mark.parametrize(
    ("observed", "named"),
    [
        ({"G": (1.0, 0.5, 10.0)}, "unknown SNAI class G"),
        ({"D": (1.0, 1.5, 10.0)}, "class D adherence"),
        ({"D": (-1.0, 0.5, 10.0)}, "class D reach_per_1000"),
        ({"D": (1.0, 0.5, float("nan"))}, "class D cost_per_patient_month"),
    ],
)
def test_scale_up_bad_observations_are_named(
    observed: dict[str, tuple[float, float, float]], named: str
) -> None:
    with pytest.raises(InvalidInputError, match=named):
        scale_up_projection(params(), build_pole_distances(TOY, []), observed, TOY)
