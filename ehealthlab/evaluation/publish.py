"""`ehealthlab publish-evaluation`: compute an evaluation for every grouping from one snapshot
and keep it in the store, where the FHIR MeasureReports and the pilot dashboard publish it.

`evaluate` only reads; this is the one command that writes evaluations. A timer (or the
demo) runs it; each run adds rows, and the latest of each population, grouping and period
is the current one.

It also publishes, for the grouping `all`, each whole week (Monday to the next Monday) that
lies in the period: the pilot dashboard's trends by week read those rows, so each point of a
trend is exactly what `evaluate --from <Monday> --to <next Monday>` gives, never a weekly
figure recomputed in SQL. A week that is the whole period is not published twice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from ehealthlab.evaluation.arguments import add_period
from ehealthlab.evaluation.compute import evaluate
from ehealthlab.evaluation.dataset import GROUPINGS, POPULATIONS, Period
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.output import to_document
from ehealthlab.evaluation.service import check_request, economic_model, save_evaluation
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import Connection, connect


def whole_weeks(period: Period) -> Iterator[Period]:
    """Each Monday-to-Monday week inside `[start, end)`, in order."""
    monday = period.start + timedelta(days=(7 - period.start.weekday()) % 7)
    while monday + timedelta(days=7) <= period.end:
        yield Period(monday, monday + timedelta(days=7))
        monday += timedelta(days=7)


def publish_evaluations(
    conn: Connection,
    settings: Settings,
    period: Period,
    population: str,
    *,
    now: datetime | None = None,
) -> dict[str, UUID]:
    """Every grouping's evaluation, from one Dataset, and grouping `all` of each whole week
    of the period (keyed ``all/<Monday>``; each week its own snapshot), saved in one
    transaction."""
    model = economic_model(settings)
    computed_at = now or datetime.now(UTC)
    documents: dict[str, dict[str, Any]] = {}
    data = fetch_dataset(conn, period, population)
    for grouping in GROUPINGS:
        evaluation = evaluate(data, grouping, seed=settings.evaluation_seed, economics=model)
        documents[grouping] = to_document(
            evaluation, computed_at=computed_at, min_group_patients=settings.min_group_patients
        )
    del data
    for week in whole_weeks(period):
        if week == period:
            continue  # its `all` is the period's, already above
        weekly = fetch_dataset(conn, week, population)
        evaluation = evaluate(weekly, "all", seed=settings.evaluation_seed, economics=model)
        documents[f"all/{week.start.isoformat()}"] = to_document(
            evaluation, computed_at=computed_at, min_group_patients=settings.min_group_patients
        )
    with conn.transaction():
        return {key: save_evaluation(conn, document) for key, document in documents.items()}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "publish-evaluation",
        help="compute every grouping's indicators and keep them for MeasureReports, dashboards",
        description="Evaluate [--from, --to) for every grouping in one snapshot, and each "
        "whole week (Monday to Monday) in it for all patients, and store the results; FHIR "
        "MeasureReports and the pilot dashboard show the latest.",
    )
    add_period(parser)
    parser.add_argument("--population", choices=POPULATIONS, default="real")
    parser.set_defaults(handler=run_publish)


def run_publish(args: argparse.Namespace, settings: Settings) -> int:
    period = check_request(args.start, args.end, "all", args.population)
    settings = settings_with_stack(settings)
    with connect(settings) as conn:
        saved = publish_evaluations(conn, settings, period, args.population)
    weeks = sum(1 for key in saved if key.startswith("all/"))
    print(
        f"published {len(saved) - weeks} evaluations of the {args.population} population, "
        f"{period.start} to {period.end} (excluded), and {weeks} weekly ones",
        file=sys.stderr,
    )
    return 0
