"""One evaluation from the store to its document: fetch in one snapshot, compute, shape.

The thin piece the command, the API route and the demo share, so the three give the same
numbers for the same period, grouping and population.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from ehealthlab.errors import InvalidFieldError
from ehealthlab.evaluation import economics
from ehealthlab.evaluation.compute import EconomicModel, evaluate
from ehealthlab.evaluation.dataset import GROUPINGS, POPULATIONS, Period
from ehealthlab.evaluation.economic_parameters import load_parameters
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.output import to_document
from ehealthlab.evaluation.snai_reference import pole_distances
from ehealthlab.settings import Settings
from ehealthlab.store.db import Connection

#: the days a period may cover: a day's bounds in UTC must exist (year 1 in Rome begins in
#: year 0 in UTC, which Python cannot represent: a 500 found by fuzzing the API)
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(2999, 12, 31)


def check_request(start: date, end: date, grouping: str, population: str) -> Period:
    """The period, or an InvalidFieldError naming what is wrong."""
    for name, day in (("from", start), ("to", end)):
        if not FIRST_DAY <= day <= LAST_DAY:
            raise InvalidFieldError(name, f"{day} is outside {FIRST_DAY} to {LAST_DAY}")
    if end <= start:
        raise InvalidFieldError("to", f"the period is [from, to): {end} is not after {start}")
    if grouping not in GROUPINGS:
        raise InvalidFieldError("by", f"unknown grouping {grouping!r} ({', '.join(GROUPINGS)})")
    if population not in POPULATIONS:
        raise InvalidFieldError(
            "population", f"unknown population {population!r} (real or simulated)"
        )
    return Period(start, end)


def economic_model(settings: Settings) -> EconomicModel:
    """The economic model with the configured parameters and the shipped reference data."""
    params = load_parameters(settings.economics_file)
    distances = pole_distances()

    def model(inputs: economics.EconomicInputs) -> dict[str, float | None]:
        return economics.compute_economics(params, distances, inputs)

    return model


def run_evaluation(
    conn: Connection,
    settings: Settings,
    period: Period,
    grouping: str,
    population: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The JSON of indicators.md for one population, period and grouping."""
    data = fetch_dataset(conn, period, population)
    evaluation = evaluate(
        data, grouping, seed=settings.evaluation_seed, economics=economic_model(settings)
    )
    return to_document(
        evaluation,
        computed_at=now or datetime.now(UTC),
        min_group_patients=settings.min_group_patients,
    )


def save_evaluation(conn: Connection, document: dict[str, Any]) -> UUID:
    """Keep a computed evaluation, for what publishes it (MeasureReports, dashboards)."""
    row = conn.execute(
        "INSERT INTO evaluations (population, grouping, period_from, period_to, computed_at,"
        " document) VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING id",
        (
            document["population"], document["by"], document["period"]["from"],
            document["period"]["to"], document["computed_at"], json.dumps(document),
        ),
    ).fetchone()  # fmt: skip
    assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
    return UUID(str(row[0]))
