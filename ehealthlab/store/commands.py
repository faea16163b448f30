"""`ehealthlab db ...`: schema migrations and reference data."""

from __future__ import annotations

import argparse
from typing import Any

from ehealthlab.settings import Settings
from ehealthlab.stack.local import settings_with_stack
from ehealthlab.store.db import connect
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    db = subparsers.add_parser(
        "db",
        help="the time-series store",
        description="The time-series store: TimescaleDB when the server has it, plain "
        "PostgreSQL otherwise, with the same schema (docs/store.md).",
    )
    db_commands = db.add_subparsers(
        title="db commands", dest="db_command", required=True, metavar="COMMAND"
    )
    migrate_parser = db_commands.add_parser(
        "migrate",
        help="apply schema migrations and load reference data (safe to rerun)",
        description="Apply the store's migrations in order (TimescaleDB form when the server "
        "has the extension loaded, plain PostgreSQL otherwise; EHEALTHLAB_STORE_FORM forces "
        "one) and load the 312 CMTo municipalities. Rerunning applies nothing new.",
    )
    migrate_parser.set_defaults(handler=run_migrate)


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    with connect(settings, autocommit=True) as conn:
        report = migrate(conn, settings.store_form)
        municipalities = load_municipalities(conn)
    applied = ", ".join(f"{v:04d}" for v in report.applied) or "none (already up to date)"
    print(f"store form: {report.form}; migrations applied: {applied}")
    print(f"municipalities loaded: {municipalities}")
    return 0
