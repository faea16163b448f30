"""Distances to the SNAI poles: the haversine formula against known distances and its
properties (generated), and each shipped municipality's distance to its pole, against figures
worked out by hand from the coordinates written into the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from economics_fixtures import (
    ALA_DI_STURA,
    COLLEGNO,
    MILANO,
    PANCALIERI,
    SAVIGLIANO,
    TORINO,
    VILLAFRANCA,
    great_circle_km,
    inputs,
    params,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.economics import compute_economics
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
    # near antipodal points haversine's asin(sqrt(h)) keeps only about sqrt(machine epsilon)
    # of the angle: about 0.1 m on the Earth's radius (a case off by 6.6 mm was found), so
    # the three distances are compared to a metre, far below what a travel time can tell
    assert haversine_km(*a, *c) <= haversine_km(*a, *b) + haversine_km(*b, *c) + 1e-3


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
