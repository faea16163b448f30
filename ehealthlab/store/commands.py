"""`ehealthlab db ...`: schema migrations, reference data, retention and erasure."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ehealthlab.errors import ConfigurationError, InvalidInputError
from ehealthlab.fhir.bulk.worker import exports_directory
from ehealthlab.gateway.pseudonyms import patient_pseudonym
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import connect
from ehealthlab.store.erasure import erase_patient, find_patient
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities
from ehealthlab.store.retention import run_retention


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
    retention = db_commands.add_parser(
        "retention",
        help="delete data past the retention period (run it daily, e.g. from cron)",
        description="Delete readings, rejects, duplicates, the message log, presence events, "
        "alerts, the patients' daily rollup, the FHIR audit trail and finished export jobs of "
        "pilot days before the last DAYS (EHEALTHLAB_RETENTION_DAYS unless --older-than), in "
        "batches; the start-ups' rollups without device or patient and the records of erasures "
        "are kept (docs/reliability-privacy.md).",
    )
    retention.add_argument(
        "--older-than", type=int, metavar="DAYS", help="days kept (default: the setting)"
    )
    retention.add_argument(
        "--now", type=_moment, help="the clock to run by, ISO 8601 with an offset (default: now)"
    )
    retention.set_defaults(handler=run_retention_command)
    erase = db_commands.add_parser(
        "erase-patient",
        help="erase one patient (GDPR art. 17): readings, alerts, FHIR resources, exports",
        description="Delete everything of one patient — readings (Observations), alerts, "
        "enrolments, SUS responses, the Patient — keep the rollups right, withdraw bulk "
        "exports that may include them, and record the erasure (counts, by whom, when; never "
        "the identifier). A second run says nothing is left.",
    )
    erase.add_argument(
        "patient",
        nargs="?",
        help="the patient's id (the FHIR Patient id, as Patient/ID or ID)",
    )
    erase.add_argument(
        "--provider",
        type=UUID,
        help="with --identifier-stdin: the provider organisation that registered the patient",
    )
    erase.add_argument(
        "--identifier-stdin",
        action="store_true",
        help="read the provider's patient identifier (e.g. codice fiscale) from standard input "
        "instead of naming the id, so it stays out of the shell's history",
    )
    erase.add_argument("--reason", default="", help="kept with the record (no identifiers)")
    erase.set_defaults(handler=run_erase_patient)


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    with connect(settings, autocommit=True) as conn:
        report = migrate(conn, settings.store_form)
        municipalities = load_municipalities(conn)
    applied = ", ".join(f"{v:04d}" for v in report.applied) or "none (already up to date)"
    print(f"store form: {report.form}; migrations applied: {applied}")
    print(f"municipalities loaded: {municipalities}")
    return 0


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset")
    return moment


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"command line ({user})"


def run_retention_command(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    days = args.older_than if args.older_than is not None else settings.retention_days
    if days is None:
        raise ConfigurationError(
            "EHEALTHLAB_RETENTION_DAYS: not set; set it or give --older-than DAYS"
        )
    now = args.now or datetime.now(UTC)
    with connect(settings, autocommit=True) as conn:
        report = run_retention(conn, now=now, days=days, run_by=_operator())
    deleted = ", ".join(f"{t} {n}" for t, n in sorted(report.deleted.items())) or "nothing"
    print(f"retention: {days} days kept, cutoff {report.cutoff.isoformat()}; deleted: {deleted}")
    if report.chunks_dropped:
        print(f"TimescaleDB chunks dropped whole: {report.chunks_dropped}")
    return 0


def _patient_id(text: str) -> UUID:
    try:
        return UUID(text.removeprefix("Patient/"))
    except ValueError:
        raise InvalidInputError(f"{text!r} is not a patient id (Patient/ID or ID)") from None


def run_erase_patient(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    if (args.patient is None) == (not args.identifier_stdin):
        raise InvalidInputError("name the patient's id, or give --identifier-stdin (not both)")
    with connect(settings, autocommit=True) as conn:
        if args.identifier_stdin:
            if args.provider is None:
                raise InvalidInputError("--identifier-stdin needs --provider ORGANISATION_ID")
            identifier = sys.stdin.readline().strip()
            try:
                digest = patient_pseudonym(
                    settings.require_patient_key(), args.provider, identifier
                )
            except ValueError as exc:
                raise InvalidInputError(f"the identifier on standard input: {exc}") from None
            patient = find_patient(conn, args.provider, digest)
        else:
            patient = _patient_id(args.patient)
        report = erase_patient(
            conn,
            patient,
            erased_by=_operator(),
            reason=args.reason,
            exports_dir=exports_directory(settings),
        )
    print(report.summary())
    return 0
