"""The top level of a readings message (its envelope): schema, msg_id, sent_at, readings.

Reading the envelope decides whether a message can be judged at all: a message whose top
level is wrong is rejected whole, with every problem named. A well-formed envelope is
recognised on a fast path with exact types; only a faulty one is read again field by field
to say what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from ehealthlab.contract.messages import MAX_MSG_ID_LENGTH, MAX_READINGS, READINGS_SCHEMA
from ehealthlab.contract.rejection_details import field_problems
from ehealthlab.contract.timestamps import TimestampError, parse_timestamp
from ehealthlab.contract.wording import json_type, quote

_MESSAGE_FIELDS = ("schema", "msg_id", "sent_at", "readings")
_MESSAGE_KEYS = frozenset(_MESSAGE_FIELDS)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Envelope(NamedTuple):
    """The top level of a message: what could be read, and what is wrong with it."""

    problems: list[str]
    msg_id: str | None
    sent_at: datetime | None
    readings: list[Any]


def read_envelope(document: object) -> Envelope:
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
                return Envelope([], msg_id, parse_timestamp(sent_at_text), readings)
            except TimestampError:
                pass  # the full reading below names the problem
    return _read_envelope_problems(document)


def _read_envelope_problems(document: object) -> Envelope:
    """The top level read field by field, every problem named."""
    if not isinstance(document, dict):
        problem = (
            f"the message must be a JSON object with {', '.join(_MESSAGE_FIELDS)}; "
            f"got {json_type(document)}"
        )
        return Envelope([problem], None, None, [])
    problems = field_problems(document, _MESSAGE_FIELDS, "the message")
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
    return Envelope(
        problems,
        msg_id if isinstance(msg_id, str) else None,
        sent_at,
        readings if isinstance(readings, list) else [],
    )


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
