"""`ehealthlab publish-evaluation`: compute an evaluation for every grouping from one snapshot
and keep it in the store, where the FHIR MeasureReports and the pilot dashboard publish it.

`evaluate` only reads; this is the one command that writes evaluations. A timer (or the
demo) runs it; each run adds rows, and the latest of each population, grouping and period
is the current one.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ehealthlab.evaluation.arguments import add_period
from ehealthlab.evaluation.compute import evaluate
from ehealthlab.evaluation.dataset import GROUPINGS, POPULATIONS, Period
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.output import to_document
from ehealthlab.evaluation.service import check_request, economic_model, save_evaluation
from ehealthlab.settings import Settings
from ehealthlab.stack.local import settings_with_stack
from ehealthlab.store.db import Connection, connect


def publish_evaluations(
    conn: Connection,
    settings: Settings,
    period: Period,
    population: str,
    *,
    now: datetime | None = None,
) -> dict[str, UUID]:
    """Every grouping's evaluation, from one Dataset, saved in one transaction."""
    data = fetch_dataset(conn, period, population)
    model = economic_model(settings)
    computed_at = now or datetime.now(UTC)
    saved: dict[str, UUID] = {}
    with conn.transaction():
        for grouping in GROUPINGS:
            evaluation = evaluate(data, grouping, seed=settings.evaluation_seed, economics=model)
            document = to_document(
                evaluation, computed_at=computed_at, min_group_patients=settings.min_group_patients
            )
            saved[grouping] = save_evaluation(conn, document)
    return saved


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "publish-evaluation",
        help="compute every grouping's indicators and keep them for MeasureReports, dashboards",
        description="Evaluate [--from, --to) for every grouping in one snapshot and store the "
        "results; FHIR MeasureReports and the pilot dashboard show the latest.",
    )
    add_period(parser)
    parser.add_argument("--population", choices=POPULATIONS, default="real")
    parser.set_defaults(handler=run_publish)


def run_publish(args: argparse.Namespace, settings: Settings) -> int:
    period = check_request(args.start, args.end, "all", args.population)
    settings = settings_with_stack(settings)
    with connect(settings) as conn:
        saved = publish_evaluations(conn, settings, period, args.population)
    print(
        f"published {len(saved)} evaluations of the {args.population} population, "
        f"{period.start} to {period.end} (excluded)",
        file=sys.stderr,
    )
    return 0
