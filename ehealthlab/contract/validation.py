"""Validation of a readings message: bytes in, accepted and rejected readings out.

A pure function of the payload, the device's type and the receive time: no broker, no
database, no clock. It never raises on what a device sends (only on the caller's
mistakes: an unknown device type, a naive receive time), because it runs inside an ingest
worker that must not stop. Each reading is judged on its own; only a message that cannot
be read at all is rejected whole.

It is written as plain checks over what orjson returns rather than with the pydantic
models: bench/contract.py measures both designs, and on 500-reading messages these checks
do the whole job (shape, catalogue, units, clock) about as fast as pydantic checks the
shape alone, and clearly faster than pydantic followed by the same catalogue checks. The
tests hold both to the same verdict on the shape of a message.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS, Metric, device_type
from ehealthlab.contract.messages import (
    MAX_MSG_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    MAX_SEQ,
    READINGS_SCHEMA,
    ReasonCode,
)
from ehealthlab.contract.outcome import MessageOutcome, Rejection, ValidReading
from ehealthlab.contract.timestamps import TimestampError, format_timestamp, parse_timestamp
from ehealthlab.contract.wording import EN_DASH, format_number, json_type, quote

#: a device clock further off than this, either way, is treated as wrong and corrected
CLOCK_TOLERANCE_S = 120.0
#: a reading more than this after the receive time (once corrected) is refused
FUTURE_TOLERANCE = timedelta(minutes=5)

_MESSAGE_FIELDS = ("schema", "msg_id", "sent_at", "readings")
_MESSAGE_KEYS = frozenset(_MESSAGE_FIELDS)
_READING_FIELDS = ("seq", "metric", "value", "unit", "at")
_READING_KEYS = frozenset(_READING_FIELDS)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: a plain dict is faster to look up on the hot path than the catalogue's read-only view
_METRICS_BY_CODE: dict[str, Metric] = dict(METRICS)

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


def validate_message(payload: bytes, *, device_type: str, received_at: datetime) -> MessageOutcome:
    """Judge every reading of a readings message from a device of `device_type`.

    `received_at` (timezone-aware) is when the broker delivered the message; it anchors
    the clock check. Raises only for an unknown `device_type` (InvalidInputError) or a
    naive `received_at` (ValueError): mistakes of the caller, never of the device.
    """
    measured_metrics = _measured_metrics(device_type)
    if received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _whole_rejection(
            payload,
            received_at,
            ReasonCode.PAYLOAD_TOO_LARGE,
            f"message is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES} (64 KiB): "
            "split the readings into smaller messages",
        )
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return _whole_rejection(payload, received_at, ReasonCode.MALFORMED_JSON, _malformed(exc))
    try:
        digest = content_digest(document) if type(document) is dict else None
    except orjson.JSONEncodeError:  # nested past orjson's serialising depth (its parser's is 1024)
        return _whole_rejection(
            payload,
            received_at,
            ReasonCode.SCHEMA_VIOLATION,
            "the message is nested too deeply to be a readings message (it has 3 levels: "
            "the message, its 'readings' array, each reading)",
        )
    envelope = _read_envelope(document)
    if envelope.problems or envelope.msg_id is None or envelope.sent_at is None:
        return _whole_rejection(
            payload,
            received_at,
            ReasonCode.SCHEMA_VIOLATION,
            "; ".join(envelope.problems),
            msg_id=envelope.msg_id,
            sent_at=envelope.sent_at,
            digest=digest,
        )
    offset = received_at - envelope.sent_at
    accepted, rejected = _judge_readings(
        envelope.readings,
        clock_offset=offset,
        measured_metrics=measured_metrics,
        device_type_code=device_type,
        received_at=received_at,
    )
    return MessageOutcome(
        received_at=received_at,
        msg_id=envelope.msg_id,
        sent_at=envelope.sent_at,
        clock_offset_s=offset.total_seconds(),
        clock_corrected=_clock_is_wrong(offset),
        accepted=tuple(accepted),
        rejected=tuple(rejected),
        message_rejection=None,
        content_digest=digest,
    )


def content_digest(document: Mapping[str, Any]) -> bytes:
    """What makes a message the same message when it is sent again (contract v1.1): all of
    it but `sent_at`, which a resend refreshes. With the device and `msg_id`, this tells a
    redelivery (same readings: nothing counts twice) from a new message reusing a `msg_id`.

    The first 16 bytes of a SHA-256 over the message without `sent_at`, keys sorted, so a
    device that re-serialises its message in another key order still sends the same one.
    """
    content = {key: value for key, value in document.items() if key != "sent_at"}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).digest()[:16]


def _clock_is_wrong(offset: timedelta) -> bool:
    return abs(offset.total_seconds()) > CLOCK_TOLERANCE_S


def _measured_metrics(code: str) -> frozenset[str]:
    entry = DEVICE_TYPES.get(code)
    return entry.metrics if entry is not None else device_type(code).metrics


def _malformed(error: orjson.JSONDecodeError) -> str:
    detail = f"not valid JSON: {error}"
    if "NaN" in error.doc or "Infinity" in error.doc:
        detail += " (NaN and Infinity are not JSON numbers: leave such a reading out)"
    return detail


def _whole_rejection(
    payload: bytes,
    received_at: datetime,
    reason: ReasonCode,
    detail: str,
    *,
    msg_id: str | None = None,
    sent_at: datetime | None = None,
    digest: bytes | None = None,
) -> MessageOutcome:
    rejection = Rejection(
        index=None, seq=None, metric=None, at=None, reason=reason, detail=detail, raw=bytes(payload)
    )
    offset = None if sent_at is None else received_at - sent_at
    return MessageOutcome(
        received_at=received_at,
        msg_id=msg_id,
        sent_at=sent_at,
        clock_offset_s=None if offset is None else offset.total_seconds(),
        clock_corrected=False,
        accepted=(),
        rejected=(rejection,),
        message_rejection=rejection,
        content_digest=digest,
    )


class _Envelope(NamedTuple):
    """The top level of a message: what could be read, and what is wrong with it."""

    problems: list[str]
    msg_id: str | None
    sent_at: datetime | None
    readings: list[Any]


def _read_envelope(document: object) -> _Envelope:
    # the fast path: a well-formed top level, checked with exact types
    if type(document) is dict and document.keys() == _MESSAGE_KEYS:
        msg_id = document["msg_id"]
        sent_at_text = document["sent_at"]
        readings = document["readings"]
        if (
            document["schema"] == READINGS_SCHEMA
            and type(msg_id) is str
            and 0 < len(msg_id) <= MAX_MSG_ID_LENGTH
            and _CONTROL_CHARACTER.search(msg_id) is None
            and type(sent_at_text) is str
            and type(readings) is list
            and 0 < len(readings) <= MAX_READINGS
        ):
            try:
                return _Envelope([], msg_id, parse_timestamp(sent_at_text), readings)
            except TimestampError:
                pass  # the full reading below names the problem
    return _read_envelope_problems(document)


def _read_envelope_problems(document: object) -> _Envelope:
    """The top level read field by field, every problem named."""
    if not isinstance(document, dict):
        problem = (
            f"the message must be a JSON object with {', '.join(_MESSAGE_FIELDS)}; "
            f"got {json_type(document)}"
        )
        return _Envelope([problem], None, None, [])
    problems = _field_problems(document, _MESSAGE_FIELDS, "the message")
    schema = document.get("schema", READINGS_SCHEMA)
    if schema != READINGS_SCHEMA:
        shown = quote(schema) if isinstance(schema, str) else json_type(schema)
        problems.append(f"'schema' is {shown}; this platform accepts {READINGS_SCHEMA!r}")
    msg_id = _checked(document, "msg_id", _msg_id_problem, problems)
    sent_at = _timestamp_field(document, "sent_at", problems)
    readings = document.get("readings")
    if "readings" in document:
        readings_problem = _readings_problem(readings)
        if readings_problem is not None:
            problems.append(readings_problem)
    return _Envelope(
        problems,
        msg_id if isinstance(msg_id, str) else None,
        sent_at,
        readings if isinstance(readings, list) else [],
    )


def _field_problems(document: Mapping[str, Any], fields: Sequence[str], where: str) -> list[str]:
    """Missing and unexpected fields of a JSON object, each named, with a likely fix."""
    problems = [f"missing field {name!r}" for name in fields if name not in document]
    for name in document:
        if name not in fields:
            guess = difflib.get_close_matches(name[:64], fields, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"unexpected field {quote(name)} in {where}{hint}")
    return problems


def _checked(
    document: Mapping[str, Any],
    name: str,
    problem_of: Callable[[object], str | None],
    problems: list[str],
) -> object:
    """document[name] when present and sound; otherwise None, its problem noted."""
    if name not in document:
        return None
    value = document[name]
    problem = problem_of(value)
    if problem is not None:
        problems.append(problem)
        return None
    return value


def _msg_id_problem(msg_id: object) -> str | None:
    if not isinstance(msg_id, str):
        return f"'msg_id' must be a string, not {json_type(msg_id)}"
    if not 1 <= len(msg_id) <= MAX_MSG_ID_LENGTH:
        return f"'msg_id' has {len(msg_id)} characters; use 1 to {MAX_MSG_ID_LENGTH}"
    if _CONTROL_CHARACTER.search(msg_id) is not None:
        return f"'msg_id' {quote(msg_id)} contains control characters"
    return None


def _timestamp_field(
    document: Mapping[str, Any], name: str, problems: list[str]
) -> datetime | None:
    if name not in document:
        return None
    text = document[name]
    if not isinstance(text, str):
        problems.append(f"{name!r} must be a date-time string, not {json_type(text)}")
        return None
    try:
        return parse_timestamp(text)
    except TimestampError as exc:
        problems.append(f"{name!r} {exc}")
        return None


def _readings_problem(readings: object) -> str | None:
    if not isinstance(readings, list):
        return f"'readings' must be an array, not {json_type(readings)}"
    if not readings:
        return f"'readings' is empty: send 1 to {MAX_READINGS} readings"
    if len(readings) > MAX_READINGS:
        return (
            f"'readings' has {len(readings)} items; the limit is {MAX_READINGS}: "
            "split the backlog into several messages, oldest first"
        )
    return None


# one pass per reading, kept in one flat function: it is the hot path of ingest
def _judge_readings(  # noqa: PLR0912, PLR0915
    readings: list[Any],
    *,
    clock_offset: timedelta,
    measured_metrics: frozenset[str],
    device_type_code: str,
    received_at: datetime,
) -> tuple[list[ValidReading], list[Rejection]]:
    """Accept or reject each reading on its own, in the order the contract checks them:
    shape, metric, device type, unit, range, time."""
    corrected = _clock_is_wrong(clock_offset)
    latest_allowed = received_at + FUTURE_TOLERANCE
    metrics = _METRICS_BY_CODE
    # readings of one measurement share `at`: parse each distinct text once
    parsed_at: dict[str, datetime] = {}
    accepted: list[ValidReading] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(readings):
        # exact types: orjson returns exact types, and a bool must not pass for an int
        if type(item) is not dict or item.keys() != _READING_KEYS:
            rejected.append(_shape_rejection(index, item))
            continue
        seq = item["seq"]
        metric_code = item["metric"]
        value = item["value"]
        unit = item["unit"]
        at_text = item["at"]
        if (
            type(seq) is not int
            or not 0 <= seq <= MAX_SEQ
            or type(metric_code) is not str
            or type(unit) is not str
            or type(at_text) is not str
            or not (type(value) is int or (type(value) is float and math.isfinite(value)))
        ):
            rejected.append(_shape_rejection(index, item))
            continue
        at = parsed_at.get(at_text)
        if at is None:
            try:
                at = parsed_at[at_text] = parse_timestamp(at_text)
            except TimestampError as exc:
                rejected.append(_rejection(index, item, ReasonCode.SCHEMA_VIOLATION, f"'at' {exc}"))
                continue

        entry = metrics.get(metric_code)
        if entry is None:
            rejected.append(
                _rejection(index, item, ReasonCode.UNKNOWN_METRIC, _unknown_metric(metric_code))
            )
            continue
        if metric_code not in measured_metrics:
            detail = _not_for_device(metric_code, device_type_code, measured_metrics)
            rejected.append(_rejection(index, item, ReasonCode.METRIC_NOT_FOR_DEVICE_TYPE, detail))
            continue
        if unit == entry.unit:
            canonical = float(value)
        else:
            conversion = entry.conversions.get(unit)
            if conversion is None:
                rejected.append(
                    _rejection(index, item, ReasonCode.UNIT_MISMATCH, _unit_mismatch(unit, entry))
                )
                continue
            canonical = conversion.to_canonical(value)
        if not entry.minimum <= canonical <= entry.maximum:
            detail = _out_of_range(entry, value, unit, canonical)
            rejected.append(_rejection(index, item, ReasonCode.OUT_OF_RANGE, detail))
            continue

        measured_at = at
        if corrected:
            try:
                measured_at = at + clock_offset
            except OverflowError:
                reason = (
                    ReasonCode.TIMESTAMP_IN_FUTURE
                    if clock_offset > timedelta(0)
                    else ReasonCode.SCHEMA_VIOLATION
                )
                detail = (
                    f"'at' {format_timestamp(at)} moved by the device clock's offset "
                    f"{clock_offset.total_seconds():+.0f} s falls outside the years 1{EN_DASH}9999"
                )
                rejected.append(_rejection(index, item, reason, detail))
                continue
        if measured_at > latest_allowed:
            detail = _in_future(at, measured_at, received_at, clock_offset if corrected else None)
            rejected.append(_rejection(index, item, ReasonCode.TIMESTAMP_IN_FUTURE, detail))
            continue
        accepted.append(
            ValidReading(
                index,
                seq,
                metric_code,
                canonical,
                entry.unit,
                value,
                unit,
                at,
                measured_at,
                corrected,
            )
        )
    return accepted, rejected


def _rejection(index: int, item: object, reason: ReasonCode, detail: str) -> Rejection:
    """A rejected reading, with what could be read of its seq, metric and at."""
    seq = metric_code = at = None
    if isinstance(item, dict):
        seq = item.get("seq")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            seq = None
        metric_code = item.get("metric")
        if not isinstance(metric_code, str):
            metric_code = None
        at_text = item.get("at")
        if isinstance(at_text, str):
            try:
                at = parse_timestamp(at_text)
            except TimestampError:
                at = None
    return Rejection(
        index=index,
        seq=seq,
        metric=metric_code,
        at=at,
        reason=reason,
        detail=detail,
        raw=orjson.dumps(item),
    )


def _shape_rejection(index: int, item: object) -> Rejection:
    return _rejection(index, item, ReasonCode.SCHEMA_VIOLATION, _reading_shape_problem(item))


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


def _reading_shape_problem(item: object) -> str:
    """Everything that makes `item` not a reading, each problem named."""
    if not isinstance(item, dict):
        return (
            f"a reading must be a JSON object with {', '.join(_READING_FIELDS)}; "
            f"got {json_type(item)}"
        )
    problems = _field_problems(item, _READING_FIELDS, "a reading")
    for name, problem_of in _READING_FIELD_PROBLEMS.items():
        if name in item:
            problem = problem_of(item[name])
            if problem is not None:
                problems.append(problem)
    return "; ".join(problems) or "not a reading"


def _unknown_metric(metric_code: str) -> str:
    guess = difflib.get_close_matches(metric_code[:64], METRICS, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    return f"unknown metric {quote(metric_code)}: {hint}known metrics are {', '.join(METRICS)}"


def _not_for_device(metric_code: str, device_type_code: str, measured: Collection[str]) -> str:
    listed = ", ".join(code for code in METRICS if code in measured)
    return f"a {device_type_code} does not measure {metric_code}; it may send {listed}"


def _unit_mismatch(unit: str, entry: Metric) -> str:
    accepted = " or ".join(repr(u) for u in entry.accepted_units)
    meant = _UNIT_MISSPELLINGS.get(unit.strip().lower())
    if meant is not None and meant in entry.conversions:
        return (
            f"unit {quote(unit)} not accepted for {entry.code}: "
            f"UCUM writes it {meant!r}; use {accepted}"
        )
    return f"unit {quote(unit)} not accepted for {entry.code}: use {accepted}"


def _out_of_range(entry: Metric, value: float, unit: str, canonical: float) -> str:
    bounds = f"{format_number(entry.minimum)}{EN_DASH}{format_number(entry.maximum)}"
    if unit == entry.unit:
        return f"{entry.code} {format_number(value)} {unit} outside {bounds}"
    return (
        f"{entry.code} {format_number(value)} {unit} = {format_number(canonical)} {entry.unit} "
        f"outside {bounds} {entry.unit}"
    )


def _in_future(
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
