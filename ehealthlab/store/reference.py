"""Reference data shipped with the package: the municipalities of the Metropolitan City of Turin.

The CSV and its PROVENANCE.md are copied unchanged from the pilot's shared data; loading is
an upsert, so rerunning it (every `db migrate` does) refreshes without duplicating.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources

from ehealthlab.store.db import Connection

MUNICIPALITIES_CSV = "cmto_municipalities.csv"

_COLUMNS = (
    "istat_code",
    "name",
    "population",
    "population_year",
    "latitude",
    "longitude",
    "area_km2",
    "snai_class",
    "snai_class_label",
    "snai_travel_time_min",
    "snai_reference_pole_istat_code",
    "snai_reference_pole_name",
    "snai_project_area_2014_2020",
    "is_province_capital",
)

MunicipalityRow = tuple[
    str,
    str,
    int,
    int,
    float | None,
    float | None,
    Decimal | None,
    str,
    str,
    Decimal | None,
    str | None,
    str | None,
    str | None,
    bool,
]


def _blank_to_none(value: str) -> str | None:
    return value if value.strip() else None


def _float(value: str) -> float | None:
    return float(value) if value.strip() else None


def _decimal(value: str) -> Decimal | None:
    return Decimal(value) if value.strip() else None


def municipality_rows() -> Iterator[MunicipalityRow]:
    """The shipped municipalities, typed, in file order."""
    text = (resources.files("ehealthlab.store") / "reference" / MUNICIPALITIES_CSV).read_text(
        encoding="utf-8"
    )
    for record in csv.DictReader(io.StringIO(text)):
        yield (
            record["istat_code"],
            record["name"],
            int(record["population"]),
            int(record["population_year"]),
            _float(record["latitude"]),
            _float(record["longitude"]),
            _decimal(record["area_km2"]),
            record["snai_class"],
            record["snai_class_label"],
            _decimal(record["snai_travel_time_min"]),
            _blank_to_none(record["snai_reference_pole_istat_code"]),
            _blank_to_none(record["snai_reference_pole_name"]),
            _blank_to_none(record["snai_project_area_2014_2020"]),
            record["is_province_capital"] == "1",
        )


def load_municipalities(conn: Connection) -> int:
    """Insert or refresh every shipped municipality; returns how many rows were written."""
    columns = ", ".join(_COLUMNS)
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    rows = list(municipality_rows())
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO municipalities ({columns}) VALUES ({placeholders})"  # noqa: S608 - fixed column names
            f" ON CONFLICT (istat_code) DO UPDATE SET {updates}",
            rows,
        )
    return len(rows)
