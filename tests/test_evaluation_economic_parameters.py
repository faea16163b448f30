"""The economic model's parameters: the shipped economics.toml loads with the spec's values and
says, value by value, whether the spec gives it; a bad or missing file is one line naming the
parameter and the file."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.economic_parameters import EconomicParameters, load_parameters

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
