"""The SNAI reference data the economic model stands on: municipalities, poles, distances.

Travel avoided is measured from a patient's municipality to its SNAI reference pole: the
straight-line (haversine) km between them and the SNAI travel minutes. The municipalities
are the shipped reference data (store/reference, MUNICIPALITIES_CSV); a pole outside the
Metropolitan City is known only by its place, from OUTSIDE_POLES_CSV. Both are read from
the package once, never from the store, and a row the model cannot use is an error naming it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final, overload

import numpy as np
import numpy.typing as npt

from ehealthlab.errors import InvalidInputError
from ehealthlab.store.reference import MUNICIPALITIES_CSV, municipality_rows

FloatArray = npt.NDArray[np.float64]

#: SNAI reference poles outside the Metropolitan City, next to MUNICIPALITIES_CSV
OUTSIDE_POLES_CSV: Final = "snai_reference_poles_outside_cmto.csv"
#: mean Earth radius (IUGG R1), km
EARTH_RADIUS_KM: Final = 6371.0088
#: the SNAI classes, in order
SNAI_CLASSES: Final = ("A", "B", "C", "D", "E", "F")


@overload
def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float: ...
@overload
def haversine_km(
    lat1: FloatArray,
    lon1: FloatArray | float,
    lat2: FloatArray | float,
    lon2: FloatArray | float,
) -> FloatArray: ...
@overload
def haversine_km(
    lat1: FloatArray | float,
    lon1: FloatArray | float,
    lat2: FloatArray | float,
    lon2: FloatArray | float,
) -> FloatArray | float: ...
def haversine_km(
    lat1: FloatArray | float,
    lon1: FloatArray | float,
    lat2: FloatArray | float,
    lon2: FloatArray | float,
) -> FloatArray | float:
    """Great-circle km between points in decimal degrees (WGS84 on a sphere of the mean Earth
    radius); broadcasts over numpy arrays, returns a float for scalars."""
    phi1, lam1, phi2, lam2 = (
        np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2)
    )
    h = (
        np.sin((phi2 - phi1) / 2) ** 2
        + np.cos(phi1) * np.cos(phi2) * np.sin((lam2 - lam1) / 2) ** 2
    )
    # clip: rounding can push h a hair above 1 for antipodal points
    km: FloatArray = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    return float(km) if km.ndim == 0 else km


@dataclass(frozen=True)
class Municipality:
    """What the economic model needs of one CMTo municipality of the reference data."""

    istat_code: str
    name: str
    population: int
    snai_class: str
    latitude: float
    longitude: float
    #: SNAI mean travel time to the reference pole, minutes (0 for a pole itself)
    snai_travel_time_min: float
    pole_istat_code: str


@dataclass(frozen=True)
class Pole:
    """A SNAI reference pole outside the Metropolitan City, where only its place is known."""

    istat_code: str
    name: str
    latitude: float
    longitude: float


def _reference_text(name: str) -> str:
    return (resources.files("ehealthlab.store") / "reference" / name).read_text(encoding="utf-8")


@cache
def reference_municipalities() -> tuple[Municipality, ...]:
    """The shipped CMTo municipalities, in file order (read once). A row without coordinates,
    travel time or pole cannot enter the model: InvalidInputError names it."""
    out = []
    for row in municipality_rows():
        code, name, population, lat, lon, snai_class, minutes, pole = (
            row[0],
            row[1],
            row[2],
            row[4],
            row[5],
            row[7],
            row[9],
            row[10],
        )
        if lat is None or lon is None or minutes is None or pole is None:
            raise InvalidInputError(
                f"{MUNICIPALITIES_CSV}: municipality {code} ({name}) lacks coordinates, "
                "SNAI travel time or reference pole"
            )
        out.append(Municipality(code, name, population, snai_class, lat, lon, float(minutes), pole))
    return tuple(out)


@cache
def outside_poles() -> tuple[Pole, ...]:
    """The shipped SNAI reference poles outside CMTo (read once)."""
    rows = csv.DictReader(io.StringIO(_reference_text(OUTSIDE_POLES_CSV)))
    return tuple(
        Pole(r["istat_code"], r["name"], float(r["latitude"]), float(r["longitude"])) for r in rows
    )


@dataclass(frozen=True, eq=False)
class PoleDistances:
    """Per municipality (ISTAT code, sorted): straight-line km to its SNAI reference pole and
    the SNAI travel minutes to it. Arrays, so a group's patients are looked up at once."""

    istat_codes: npt.NDArray[np.str_]
    km: FloatArray
    minutes: FloatArray

    def indices(self, municipalities: Sequence[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.intp]:
        """Row of each code; InvalidInputError names the codes the reference does not know."""
        codes = np.asarray(municipalities, dtype=np.str_).reshape(-1)
        if codes.size == 0:
            return np.zeros(0, dtype=np.intp)
        rows = np.searchsorted(self.istat_codes, codes)
        found = rows < self.istat_codes.size
        found[found] = self.istat_codes[rows[found]] == codes[found]
        if not found.all():
            unknown = ", ".join(sorted(set(codes[~found].tolist())))
            raise InvalidInputError(f"municipality not in the reference data: {unknown}")
        return rows

    def lookup(
        self, municipalities: Sequence[str] | npt.NDArray[np.str_]
    ) -> tuple[FloatArray, FloatArray]:
        """(km to the pole, travel minutes), parallel to `municipalities`."""
        rows = self.indices(municipalities)
        return self.km[rows], self.minutes[rows]


def build_pole_distances(
    municipalities: Sequence[Municipality], poles_outside: Sequence[Pole]
) -> PoleDistances:
    """Distances from each municipality to its pole, the pole found among the municipalities
    or the poles outside; a pole found in neither is an InvalidInputError naming it."""
    places = {p.istat_code: (p.latitude, p.longitude) for p in poles_outside}
    places.update({m.istat_code: (m.latitude, m.longitude) for m in municipalities})
    lost = sorted({m.pole_istat_code for m in municipalities} - set(places))
    if lost:
        named = "; ".join(
            f"{code}, pole of "
            + ", ".join(m.istat_code for m in municipalities if m.pole_istat_code == code)
            for code in lost
        )
        raise InvalidInputError(
            f"SNAI reference pole found neither in {MUNICIPALITIES_CSV} nor in "
            f"{OUTSIDE_POLES_CSV}: {named}"
        )
    ordered = sorted(municipalities, key=lambda m: m.istat_code)
    lat = np.array([m.latitude for m in ordered], dtype=np.float64)
    lon = np.array([m.longitude for m in ordered], dtype=np.float64)
    pole = np.array([places[m.pole_istat_code] for m in ordered], dtype=np.float64).reshape(-1, 2)
    return PoleDistances(
        istat_codes=np.array([m.istat_code for m in ordered], dtype=np.str_),
        km=haversine_km(lat, lon, pole[:, 0], pole[:, 1]),
        minutes=np.array([m.snai_travel_time_min for m in ordered], dtype=np.float64),
    )


@cache
def pole_distances() -> PoleDistances:
    """The shipped reference data's distances (computed once)."""
    return build_pole_distances(reference_municipalities(), outside_poles())
