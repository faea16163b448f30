"""`ehealthlab sus import FILE.csv [--population real|simulated]`: System Usability Scale
responses into the store (interfaces-v1.md), all or nothing.

A file with any bad row imports nothing; the one-line error names every bad line and column
(exit status 2). A response with a patient belongs to the patient's population; `--population`
says which population the responses without a patient belong to (default real).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.sus import COLUMNS, parse_csv
from ehealthlab.evaluation.sus_store import POPULATIONS, ImportReport, import_responses
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import connect

#: largest file read, in bytes (a SUS file of a million responses is some 40 MB)
MAX_FILE_BYTES = 64 * 1024 * 1024


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    sus = subparsers.add_parser(
        "sus",
        help="System Usability Scale responses",
        description="System Usability Scale (SUS) responses, which the evaluation's sus_mean "
        "and sus_responses count (indicators.md).",
    )
    commands = sus.add_subparsers(
        title="sus commands", dest="sus_command", required=True, metavar="COMMAND"
    )
    importer = commands.add_parser(
        "import",
        help="import SUS responses from a CSV file (all or nothing)",
        description=f"Import a CSV file of SUS responses, one a row, columns {', '.join(COLUMNS)} "
        "(patient_id may be empty or left out; items 1 to 5). A response counts in the period "
        "of its answered_on and in the group of its patient, else of its municipality. If any "
        "row is bad nothing is imported, and every bad line and column is named.",
    )
    importer.add_argument("file", metavar="FILE.csv", type=Path, help="the CSV file (UTF-8)")
    importer.add_argument(
        "--population",
        choices=POPULATIONS,
        default="real",
        help="the population of responses without a patient (default real); a patient's "
        "response belongs to its provider's population",
    )
    importer.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    report = import_file(args.file, args.population, settings_with_stack(settings))
    print(
        f"imported {report.total} SUS response{'s' if report.total != 1 else ''} from "
        f"{args.file} ({report.real} real, {report.simulated} simulated)"
    )
    return 0


def import_file(path: Path, population: str, settings: Settings) -> ImportReport:
    """Read, check and store one file; InvalidInputError (exit 2) for a bad file."""
    text = read_text(path)
    responses = parse_csv(text, source=str(path))
    if population not in POPULATIONS:
        raise InvalidInputError(f"--population: {population!r} is not real or simulated")
    with connect(settings) as conn:
        return import_responses(
            conn,
            responses,
            population="simulated" if population == "simulated" else "real",
            source=str(path),
        )


def read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidInputError(
                f"{path}: {size // (1024 * 1024)} MiB is more than a SUS file holds; split it"
            )
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path}: is a directory, not a CSV file") from None
    except PermissionError:
        raise InvalidInputError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8 CSV"
        ) from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot be read ({exc.strerror})") from None
