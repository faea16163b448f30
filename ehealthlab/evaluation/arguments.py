"""Command-line arguments the evaluation's commands share: the period [--from, --to)."""

from __future__ import annotations

import argparse
from datetime import date


def parse_day(text: str) -> date:
    """A command line's date (YYYY-MM-DD), or argparse's one-line error."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_period(parser: argparse.ArgumentParser) -> None:
    """--from and --to, whole days of Europe/Rome, the second excluded."""
    parser.add_argument("--from", dest="start", type=parse_day, required=True, metavar="DATE",
                        help="first day of the period")  # fmt: skip
    parser.add_argument("--to", dest="end", type=parse_day, required=True, metavar="DATE",
                        help="first day after the period")  # fmt: skip
