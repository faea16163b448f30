"""`ehealthlab replay-alerts`: the alerts other thresholds would have raised over a past period
(docs/replay-alerts.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.arguments import add_period
from ehealthlab.evaluation.replay import BREAKDOWNS, POPULATIONS, Period, replay
from ehealthlab.evaluation.replay_fetch import fetch_replay_data
from ehealthlab.evaluation.replay_plan import load_plan, plan_of
from ehealthlab.evaluation.replay_report import FORMATS, render
from ehealthlab.ingest.alerts import DEFAULT_RULES, load_rules
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import connect


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "replay-alerts",
        help="alerts and patients flagged under other alert thresholds over a past period",
        description="Re-run the clinical alert rules (ingest's own code) with the settings of "
        "a rules file over the accepted readings of [--from, --to) (whole Europe/Rome days) "
        "and report, per rule and setting, alerts (nurse workload), alerts per 100 "
        "patient-weeks and patients flagged, beside the alerts ingest stored under the "
        "current rules, which the replay of the current settings must reproduce "
        "(docs/replay-alerts.md). Reads the store only.",
    )
    add_period(parser)
    parser.add_argument(
        "--rules",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML rules file, ingest's format where a number may be a list of settings to "
        "compare (without it: only the current settings)",
    )
    parser.add_argument(
        "--current-rules",
        type=Path,
        default=None,
        metavar="FILE",
        help="the rules ingest ran with (default: EHEALTHLAB_ALERT_RULES, else the defaults)",
    )
    parser.add_argument("--population", choices=POPULATIONS, default="real")
    parser.add_argument(
        "--by", choices=BREAKDOWNS, default=None, help="also count per group of patients"
    )
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="default: stdout")
    parser.set_defaults(handler=run_replay_alerts)


def run_replay_alerts(args: argparse.Namespace, settings: Settings) -> int:
    period = Period(args.start, args.end)
    current_file: Path | None = args.current_rules or settings.alert_rules
    current = DEFAULT_RULES if current_file is None else load_rules(current_file)
    described = "the defaults" if current_file is None else str(current_file)
    plan = plan_of(current) if args.rules is None else load_plan(args.rules, current)
    if args.out is not None and not args.out.parent.is_dir():
        raise InvalidInputError(f"--out {args.out}: no directory {args.out.parent}")
    settings = settings_with_stack(settings)
    with connect(settings) as conn:
        data = fetch_replay_data(conn, period, args.population, plan, args.by)
    result = replay(data, plan)
    output = render(result, args.format, current_rules=described)
    if args.out is None:
        sys.stdout.write(output)
    else:
        args.out.write_text(output, encoding="utf-8")
    if not result.agrees and (args.format != "text" or args.out is not None):
        print(
            "ehealthlab: warning: the replay of the current rules does not reproduce the "
            "alerts ingest stored (see the output's agrees fields)",
            file=sys.stderr,
        )
    return 0
