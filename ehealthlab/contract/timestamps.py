"""RFC 3339 timestamps as the contract wants them: a date, a time and a UTC offset.

Python's `datetime.fromisoformat` accepts far more than RFC 3339 (week dates, basic format,
no offset), and pydantic's parser more still, so both the models and the fast validator go
through this one function: a device gets the same verdict from either.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ehealthlab.contract.wording import quote

#: the JSON Schema `pattern` of a contract timestamp (offset required)
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)

_TIMESTAMP = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]"
    r"(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)"
    r"(?P<offset>[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


class TimestampError(ValueError):
    """A timestamp is not RFC 3339 with an offset; the message says what to send instead."""


def parse_timestamp(text: str) -> datetime:
    """The aware datetime `text` denotes; TimestampError if it is not RFC 3339 with offset,
    or if it cannot be expressed in UTC (0001-01-01T00:30+01:00 is before year 1 there)."""
    return _representable(_parse(text), text)


def _representable(moment: datetime, text: str) -> datetime:
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise TimestampError(f"{quote(text)} falls outside the years 1 to 9999 in UTC") from None
    return moment


def _parse(text: str) -> datetime:
    # the common shapes (2026-11-25T08:00:30+01:00, 2026-11-25T07:00:30.250Z) without the
    # regex: the separators and the fraction are checked here, and fromisoformat checks that
    # every other position is an ASCII digit and every field in its range
    size = len(text)
    if size >= 20 and text[10] == "T" and text[4] == text[7] == "-" and text[13] == text[16] == ":":
        if text[-1] == "Z":
            fraction = text[19:-1]
        elif size >= 25 and text[-6] in "+-" and text[-3] == ":" and text[-2] in "012345":
            fraction = text[19:-6]
        else:
            fraction = "-"  # no offset: the full parse says so
        if not fraction or (fraction[0] == "." and fraction[1:].isdigit() and fraction.isascii()):
            try:
                return datetime.fromisoformat(text)
            except ValueError:
                pass  # the full parse below says what is wrong
    return _parse_by_pattern(text)


def _parse_by_pattern(text: str) -> datetime:
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise TimestampError(
            f"{quote(text)} is not an RFC 3339 date-time: use e.g. '2026-11-25T08:00:30+01:00'"
        )
    offset = match["offset"]
    if offset is None:
        raise TimestampError(
            f"{quote(text)} has no UTC offset: add 'Z' or the local offset, e.g. '+01:00'"
        )
    if offset in ("Z", "z"):
        offset = "+00:00"
    try:
        return datetime.fromisoformat(f"{match['date']}T{match['time']}{offset}")
    except ValueError:
        raise TimestampError(f"{quote(text)} is not a valid date and time") from None


def format_timestamp(moment: datetime) -> str:
    """`moment` written the way the contract writes timestamps (offset always present)."""
    return moment.isoformat()
