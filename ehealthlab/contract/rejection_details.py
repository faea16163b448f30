"""The words of a rejection: what is wrong with a reading, said so a developer can fix it.

Every rejected reading carries a detail read by the start-up engineer integrating a device,
so each one names the problem and, where it can, the likely fix (the field or metric they
probably meant, the UCUM spelling of a unit, the clock offset that moved a time). Building
these texts is kept apart from the checks in reading_checks.py, which only call here once a
reading has failed, so the hot path stays short.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ehealthlab.contract.catalogue import METRICS, Metric
from ehealthlab.contract.clock import FUTURE_TOLERANCE
from ehealthlab.contract.messages import MAX_SEQ
from ehealthlab.contract.timestamps import TimestampError, format_timestamp, parse_timestamp
from ehealthlab.contract.wording import EN_DASH, format_number, json_type, quote

#: the fields of a reading, in the contract's order
READING_FIELDS = ("seq", "metric", "value", "unit", "at")

#: how devices misspell units (lower-cased), and the UCUM code they meant
_UNIT_MISSPELLINGS = {
    "mmhg": "mm[Hg]",
    "mm hg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "kpa": "kPa",
    "bpm": "/min",
    "beats/min": "/min",
    "breaths/min": "/min",
    "1/min": "/min",
    "min-1": "/min",
    "percent": "%",
    "c": "Cel",
    "°c": "Cel",
    "degc": "Cel",
    "cel": "Cel",
    "celsius": "Cel",
    "f": "[degF]",
    "°f": "[degF]",
    "degf": "[degF]",
    "[degf]": "[degF]",
    "fahrenheit": "[degF]",
    "kg": "kg",
    "kgs": "kg",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "[lb]": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "mg/dl": "mg/dL",
    "mmol/l": "mmol/L",
    "step": "{steps}",
    "steps": "{steps}",
    "{steps}": "{steps}",
}


def field_problems(document: Mapping[str, Any], fields: Sequence[str], where: str) -> list[str]:
    """Missing and unexpected fields of a JSON object, each named, with a likely fix."""
    problems = [f"missing field {name!r}" for name in fields if name not in document]
    for name in document:
        if name not in fields:
            guess = difflib.get_close_matches(name[:64], fields, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"unexpected field {quote(name)} in {where}{hint}")
    return problems


def _seq_problem(seq: object) -> str | None:
    if type(seq) is not int:
        return f"'seq' must be an integer, not {json_type(seq)}"
    if not 0 <= seq <= MAX_SEQ:
        return f"'seq' {seq} is outside 0{EN_DASH}{MAX_SEQ}"
    return None


def _string_problem(name: str) -> Callable[[object], str | None]:
    def problem(value: object) -> str | None:
        if isinstance(value, str):
            return None
        return f"{name!r} must be a string, not {json_type(value)}"

    return problem


def _value_problem(value: object) -> str | None:
    if type(value) is not int and type(value) is not float:
        return f"'value' must be a number, not {json_type(value)}"
    if not math.isfinite(value):
        return "'value' is not finite"
    return None


def _at_problem(at: object) -> str | None:
    if not isinstance(at, str):
        return f"'at' must be a date-time string, not {json_type(at)}"
    try:
        parse_timestamp(at)
    except TimestampError as exc:
        return f"'at' {exc}"
    return None


_READING_FIELD_PROBLEMS: Mapping[str, Callable[[object], str | None]] = {
    "seq": _seq_problem,
    "metric": _string_problem("metric"),
    "value": _value_problem,
    "unit": _string_problem("unit"),
    "at": _at_problem,
}


def reading_shape_problem(item: object) -> str:
    """Everything that makes `item` not a reading, each problem named."""
    if not isinstance(item, dict):
        return (
            f"a reading must be a JSON object with {', '.join(READING_FIELDS)}; "
            f"got {json_type(item)}"
        )
    problems = field_problems(item, READING_FIELDS, "a reading")
    for name, problem_of in _READING_FIELD_PROBLEMS.items():
        if name in item:
            problem = problem_of(item[name])
            if problem is not None:
                problems.append(problem)
    return "; ".join(problems) or "not a reading"


def unknown_metric(metric_code: str) -> str:
    guess = difflib.get_close_matches(metric_code[:64], METRICS, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    return f"unknown metric {quote(metric_code)}: {hint}known metrics are {', '.join(METRICS)}"


def not_for_device(metric_code: str, device_type_code: str, measured: Collection[str]) -> str:
    listed = ", ".join(code for code in METRICS if code in measured)
    return f"a {device_type_code} does not measure {metric_code}; it may send {listed}"


def unit_mismatch(unit: str, entry: Metric) -> str:
    accepted = " or ".join(repr(u) for u in entry.accepted_units)
    meant = _UNIT_MISSPELLINGS.get(unit.strip().lower())
    if meant is not None and meant in entry.conversions:
        return (
            f"unit {quote(unit)} not accepted for {entry.code}: "
            f"UCUM writes it {meant!r}; use {accepted}"
        )
    return f"unit {quote(unit)} not accepted for {entry.code}: use {accepted}"


def out_of_range(entry: Metric, value: float, unit: str, canonical: float) -> str:
    bounds = f"{format_number(entry.minimum)}{EN_DASH}{format_number(entry.maximum)}"
    if unit == entry.unit:
        return f"{entry.code} {format_number(value)} {unit} outside {bounds}"
    return (
        f"{entry.code} {format_number(value)} {unit} = {format_number(canonical)} {entry.unit} "
        f"outside {bounds} {entry.unit}"
    )


def in_future(
    at: datetime, measured_at: datetime, received_at: datetime, clock_offset: timedelta | None
) -> str:
    ahead_s = (measured_at - received_at).total_seconds()
    limit_s = FUTURE_TOLERANCE.total_seconds()
    moment = f"'at' {format_timestamp(at)}"
    if clock_offset is not None:
        moment += (
            f", moved by the device clock's offset {clock_offset.total_seconds():+.0f} s "
            f"to {format_timestamp(measured_at)},"
        )
    return (
        f"{moment} is {ahead_s:.0f} s after the receive time "
        f"{format_timestamp(received_at)} (at most {limit_s:.0f} s allowed)"
    )
