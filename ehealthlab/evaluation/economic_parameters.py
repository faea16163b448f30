"""The economic model's parameters: economics.toml read, checked and explained when wrong.

Every parameter of the model (indicators.md v1.1, "Economic sustainability") is required and
none may be negative, so a forgotten or mistyped key is an error naming it, never a silent
default. The shipped defaults sit next to this module in economics.toml, each marked SPEC or
ASSUMPTION; an operator's own file replaces them (EHEALTHLAB_ECONOMICS_FILE).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError

#: the shipped parameters, next to this module
PARAMETERS_TOML: Final = "economics.toml"

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
