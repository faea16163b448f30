"""`ehealthlab evaluate`: the pilot's indicators for one period, grouping and population.

JSON and CSV are the operator's (every value). HTML is the pilot report for people
(docs/report.md): every grouping it shows is computed from one snapshot, small groups
suppressed, so it ignores `--by`. Nothing is written to the store: `publish-evaluation`
keeps evaluations for the MeasureReports and the pilot dashboard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.arguments import add_period
from ehealthlab.evaluation.dataset import GROUPINGS, POPULATIONS
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.output import to_csv
from ehealthlab.evaluation.service import check_request, run_evaluation
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import connect

FORMATS = ("json", "csv", "html")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compute the pilot's indicators (docs/indicators.md)",
        description="The indicators of docs/indicators.md over [--from, --to) in days of "
        "Europe/Rome, for all patients and per group of --by, for one population.",
    )
    add_period(parser)
    parser.add_argument("--by", choices=GROUPINGS, default="all", metavar="GROUP",
                        help=f"one of {', '.join(GROUPINGS)} (default all)")  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="json",
                        help="json or csv (every value, for the operator), or html (the "
                        "pilot report for people: all groupings, small groups suppressed; "
                        "--by does not apply)")  # fmt: skip
    parser.add_argument("--population", choices=POPULATIONS, default="real",
                        help="real (default) or simulated; they never mix")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write here instead of standard output")  # fmt: skip
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    period = check_request(args.start, args.end, args.by, args.population)
    settings = settings_with_stack(settings)
    if args.format == "html":
        # matplotlib loads only for the report, not on every command line
        from ehealthlab.evaluation.report import build_report  # noqa: PLC0415

        with connect(settings) as conn:
            data = fetch_dataset(conn, period, args.population)
        return _write(build_report(data, settings), args.out)
    with connect(settings) as conn:
        document = run_evaluation(conn, settings, period, args.by, args.population)
    text = (
        orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
        if args.format == "json"
        else to_csv(document)
    )
    return _write(text, args.out)


def _write(text: str, out: Path | None) -> int:
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}", file=sys.stderr)
    return 0
