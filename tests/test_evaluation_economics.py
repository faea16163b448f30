"""The economic model against figures worked out by hand here, from the coordinates of the
shipped reference data written into the test and the formulas of indicators.md."""

from __future__ import annotations

import math
import re
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.economic_parameters import EconomicParameters, load_parameters
from ehealthlab.evaluation.economics import INDICATOR_IDS, EconomicInputs, compute_economics
from ehealthlab.evaluation.scale_up import ClassObservation, scale_up_projection
from ehealthlab.evaluation.snai_reference import (
    EARTH_RADIUS_KM,
    Municipality,
    Pole,
    build_pole_distances,
    haversine_km,
    outside_poles,
    pole_distances,
    reference_municipalities,
)

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


# --- Parameters ---------------------------------------------------------------------------


def test_every_default_loads_with_the_spec_values() -> None:
    p = load_parameters()
    assert (p.visits_per_month, p.road_factor, p.co2_kg_per_km, p.amortisation_months) == (
        1.0,
        1.3,
        0.170,
        36,
    )
    assert set(p.device_price_eur) == set(DEVICE_TYPES)
    assert all(v > 0 for v in p.device_price_eur.values())
    assert 60 <= p.device_price_eur["blood_pressure_monitor"] <= 120
    shipped = resources.files("ehealthlab.evaluation") / "economics.toml"
    assert set(tomllib.loads(shipped.read_text(encoding="utf-8"))) == set(
        EconomicParameters.model_fields
    )
    assert load_parameters() is p  # read once


def test_every_shipped_value_says_whether_the_spec_gives_it() -> None:
    text = (resources.files("ehealthlab.evaluation") / "economics.toml").read_text("utf-8")
    comment: list[str] = []
    previous_was_comment = False
    for line in text.splitlines():
        if line.startswith("#"):
            comment = [*comment, line] if previous_was_comment else [line]
            previous_was_comment = True
            continue
        previous_was_comment = False
        if re.match(r"^\w+ = ", line):
            key = line.split(" = ")[0]
            assert re.search(r"\b(SPEC|ASSUMPTION)\b", " ".join(comment)), key


def shipped_text() -> str:
    return (resources.files("ehealthlab.evaluation") / "economics.toml").read_text("utf-8")


def edited(pattern: str, replacement: str) -> str:
    text, count = re.subn(pattern, replacement, shipped_text(), count=1, flags=re.MULTILINE)
    assert count == 1, pattern
    return text


BAD_FILES = [
    ("missing", edited(r"^road_factor = .*\n", ""), "road_factor is missing"),
    (
        "negative",
        edited(r"^co2_kg_per_km = .*$", "co2_kg_per_km = -0.1"),
        "co2_kg_per_km: input should be greater than or equal to 0 (got -0.1)",
    ),
    (
        "negative price",
        edited(r"^thermometer = .*$", "thermometer = -40.0"),
        "device_price_eur.thermometer: input should be greater than or equal to 0",
    ),
    (
        "road factor below 1",
        edited(r"^road_factor = .*$", "road_factor = 0.9"),
        "road_factor: input should be greater than or equal to 1",
    ),
    (
        "no months",
        edited(r"^amortisation_months = .*$", "amortisation_months = 0"),
        "amortisation_months: input should be greater than 0",
    ),
    (
        "string",
        edited(r"^visits_per_month = .*$", 'visits_per_month = "1"'),
        "visits_per_month: input should be a valid number (got '1')",
    ),
    (
        "boolean",
        edited(r"^staff_eur_per_hour = .*$", "staff_eur_per_hour = true"),
        "staff_eur_per_hour: input should be a valid number (got True)",
    ),
    (
        "fractional months",
        edited(r"^amortisation_months = .*$", "amortisation_months = 36.5"),
        "amortisation_months: input should be a valid integer",
    ),
    (
        "infinite",
        edited(r"^platform_eur_per_month = .*$", "platform_eur_per_month = inf"),
        "platform_eur_per_month: input should be a finite number",
    ),
    (
        "unknown key",
        edited(r"^visit_tariff_eur = .*$", "visit_tariff_eur = 20.0\nvisit_tarif_eur = 20.0"),
        "visit_tarif_eur is not a parameter of the economic model",
    ),
    (
        "unknown device type",
        edited(r"^glucometer = .*$", "glucometer = 50.0\ntoaster = 10.0"),
        "device_price_eur: toaster is not a device type of the catalogue",
    ),
    (
        "device type without price",
        edited(r"^glucometer = .*\n", ""),
        "device_price_eur: no price for glucometer",
    ),
    ("not TOML", "road_factor = = 1.3\n", "not valid TOML"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_one_line_naming_the_parameter_and_the_file(
    tmp_path: Path, case: str, text: str, expected: str
) -> None:
    path = tmp_path / "economics.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInputError) as caught:
        load_parameters(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert expected in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"nowhere\.toml: cannot read"):
        load_parameters(tmp_path / "nowhere.toml")


def test_the_shipped_file_copied_elsewhere_loads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "economics.toml"
    path.write_text(shipped_text(), encoding="utf-8")
    assert load_parameters(path) == load_parameters()


# --- Haversine ----------------------------------------------------------------------------

latitudes = st.floats(min_value=-90, max_value=90, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)
points = st.tuples(latitudes, longitudes)
PROPERTIES = settings(max_examples=300, deadline=None)


def test_known_distances() -> None:
    assert 125 <= haversine_km(*TORINO, *MILANO) <= 127
    # one degree along a meridian is a 360th of the circumference
    assert haversine_km(45.0, 7.0, 46.0, 7.0) == pytest.approx(2 * math.pi * EARTH_RADIUS_KM / 360)
    assert haversine_km(*ALA_DI_STURA, *COLLEGNO) == pytest.approx(33.677, abs=1e-3)


@PROPERTIES
@given(points, points)
def test_haversine_is_symmetric_and_bounded(a: tuple[float, float], b: tuple[float, float]) -> None:
    d = haversine_km(*a, *b)
    assert d == pytest.approx(haversine_km(*b, *a), abs=1e-6)
    assert 0 <= d <= math.pi * EARTH_RADIUS_KM + 1e-6
    assert d == pytest.approx(great_circle_km(a, b), abs=1e-6)


@PROPERTIES
@given(points)
def test_haversine_is_zero_on_the_diagonal(a: tuple[float, float]) -> None:
    assert haversine_km(*a, *a) == 0.0


@PROPERTIES
@given(points, points, points)
def test_haversine_triangle_inequality(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]
) -> None:
    assert haversine_km(*a, *c) <= haversine_km(*a, *b) + haversine_km(*b, *c) + 1e-6


@PROPERTIES
@given(st.lists(st.tuples(points, points), min_size=1, max_size=20))
def test_haversine_on_arrays_equals_it_point_by_point(
    pairs: list[tuple[tuple[float, float], tuple[float, float]]],
) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    got = haversine_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    assert isinstance(got, np.ndarray)
    assert got.shape == (len(pairs),)
    np.testing.assert_allclose(got, [haversine_km(*p, *q) for p, q in pairs], atol=1e-9)


# --- Distances to the poles ---------------------------------------------------------------


def test_distances_for_every_shipped_municipality() -> None:
    d = pole_distances()
    assert d.istat_codes.size == 312 == len(reference_municipalities())
    assert bool(np.all(np.isfinite(d.km) & (d.km >= 0)))
    assert pole_distances() is d  # computed once


@pytest.mark.parametrize(
    ("code", "place", "pole", "minutes"),
    [
        ("001003", ALA_DI_STURA, COLLEGNO, 58.0),
        ("001178", PANCALIERI, SAVIGLIANO, 25.0),  # a pole outside CMTo
        ("001300", VILLAFRANCA, SAVIGLIANO, 21.8),
        ("001272", TORINO, TORINO, 0.0),  # its own pole
        ("001090", COLLEGNO, COLLEGNO, 0.0),
    ],
)
def test_distance_to_the_pole(
    code: str, place: tuple[float, float], pole: tuple[float, float], minutes: float
) -> None:
    km, travel = pole_distances().lookup([code])
    assert km[0] == pytest.approx(great_circle_km(place, pole), abs=1e-9)
    assert travel[0] == minutes


def test_savigliano_comes_from_the_file_of_poles_outside_cmto() -> None:
    assert outside_poles() == (Pole("004215", "Savigliano", *SAVIGLIANO),)


def test_a_pole_found_nowhere_is_named() -> None:
    with pytest.raises(InvalidInputError, match=r"004215, pole of 001178, 001300") as caught:
        build_pole_distances(reference_municipalities(), ())
    assert "\n" not in str(caught.value)
    lone = Municipality("009001", "Nowhere", 10, "E", 45.0, 7.0, 30.0, "009999")
    with pytest.raises(InvalidInputError, match="009999, pole of 009001"):
        build_pole_distances([lone], [Pole("004215", "Savigliano", *SAVIGLIANO)])


def test_an_unknown_municipality_is_named() -> None:
    with pytest.raises(InvalidInputError, match="not in the reference data: 009999, 1272"):
        pole_distances().lookup(["001272", "009999", "1272"])
    with pytest.raises(InvalidInputError, match="999999"):
        compute_economics(params(), pole_distances(), inputs([30.0], ["999999"]))


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
