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

import csv
import io
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, NamedTuple, overload

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError
from ehealthlab.store.reference import MUNICIPALITIES_CSV, municipality_rows

FloatArray = npt.NDArray[np.float64]

#: the shipped parameters, next to this module
PARAMETERS_TOML: Final = "economics.toml"
#: SNAI reference poles outside the Metropolitan City, next to MUNICIPALITIES_CSV
OUTSIDE_POLES_CSV: Final = "snai_reference_poles_outside_cmto.csv"
#: days in a month, everywhere in indicators.md
DAYS_PER_MONTH: Final = 30.0
#: mean Earth radius (IUGG R1), km
EARTH_RADIUS_KM: Final = 6371.0088
#: the SNAI classes, in order
SNAI_CLASSES: Final = ("A", "B", "C", "D", "E", "F")
#: the indicator ids compute_economics returns, in the spec's order
INDICATOR_IDS: Final = (
    "visits_avoided",
    "travel_km_avoided",
    "travel_hours_avoided",
    "co2_kg_avoided",
    "cost_per_patient_month",
    "break_even_patients",
)

_Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class EconomicParameters(BaseModel):
    """The parameters of economics.toml; every one required, none negative, no others."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    visits_per_month: _Amount
    road_factor: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    co2_kg_per_km: _Amount
    amortisation_months: Annotated[int, Field(gt=0)]
    connectivity_eur_per_patient_month: _Amount
    staff_minutes_per_alert: _Amount
    staff_eur_per_hour: _Amount
    platform_eur_per_month: _Amount
    visit_tariff_eur: _Amount
    public_travel_eur_per_km: _Amount
    device_price_eur: dict[str, _Amount]

    @field_validator("device_price_eur")
    @classmethod
    def _every_catalogue_type(cls, prices: dict[str, float]) -> dict[str, float]:
        # the catalogue is the one list of device types: a type left unpriced, or a name that
        # is not a type, is a mistake in the file, not a price of 0
        unknown = sorted(set(prices) - set(DEVICE_TYPES))
        missing = [t for t in DEVICE_TYPES if t not in prices]
        if unknown:
            raise PydanticCustomError(
                "unknown_device_type",
                "{types} not a device type of the catalogue (known: {known})",
                {
                    "types": ", ".join(unknown) + (" is" if len(unknown) == 1 else " are"),
                    "known": ", ".join(DEVICE_TYPES),
                },
            )
        if missing:
            raise PydanticCustomError(
                "missing_device_type",
                "no price for {types}",
                {"types": ", ".join(missing)},
            )
        return prices


def _describe(error: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{where} is missing"
    if kind == "extra_forbidden":
        return f"{where} is not a parameter of the economic model"
    if kind in {"unknown_device_type", "missing_device_type"}:
        return f"{where}: {error['msg']}"
    return f"{where}: {str(error['msg']).lower()} (got {error['input']!r})"


@cache
def _shipped_parameters() -> EconomicParameters:
    text = (resources.files("ehealthlab.evaluation") / PARAMETERS_TOML).read_text(encoding="utf-8")
    return parse_parameters(tomllib.loads(text), source=PARAMETERS_TOML + " (shipped)")


def parse_parameters(document: Mapping[str, Any], *, source: str) -> EconomicParameters:
    """Validate parsed TOML; InvalidInputError names each bad parameter and `source`, on one
    line."""
    try:
        return EconomicParameters.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise InvalidInputError(f"economic parameters {source}: {problems}") from None


def load_parameters(path: Path | None = None) -> EconomicParameters:
    """The parameters in `path`, or the shipped defaults when None (read once)."""
    if path is None:
        return _shipped_parameters()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"economic parameters {path}: cannot read: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"economic parameters {path}: not valid TOML: {exc}") from None
    return parse_parameters(document, source=str(path))


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


# --- Reference data: municipalities, poles, distances ---------------------------------------


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


# --- One group ------------------------------------------------------------------------------


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


# --- Scale-up -------------------------------------------------------------------------------


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
