"""Date parameter values (`date` of Observation and AuditEvent) as the range of instants they
stand for at their precision: `2026-03-10` is that whole day, `ge2026-03` from that month on.

A date or time without a zone is read in the pilot's time zone, Europe/Rome (a clinician's
"that day"); bounds outside datetime's range are open (None).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.fhir.search.criteria import DateRange

_DATE = re.compile(
    r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_PREFIXED = re.compile(r"(?P<prefix>[a-z]{2})(?P<rest>.*)", re.DOTALL)
DATE_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"})


def parse_date(value: str) -> DateRange:
    """A date parameter value: [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][zone]]]]."""
    prefix, text = "eq", value
    prefixed = _PREFIXED.fullmatch(value)
    if prefixed is not None:
        prefix, text = prefixed["prefix"], prefixed["rest"]
        if prefix not in DATE_PREFIXES:
            raise ValueError(
                f"{prefix!r} is not a supported prefix ({', '.join(sorted(DATE_PREFIXES))})"
            )
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a FHIR date (YYYY[-MM[-DD[Thh:mm[:ss][zone]]]])")
    lower, upper = _date_range(match)
    return DateRange(prefix, lower, upper)


def _date_range(match: re.Match[str]) -> tuple[datetime | None, datetime | None]:
    year = int(match["year"])
    month = int(match["month"] or 1)
    day = int(match["day"] or 1)
    if year < 1:
        raise ValueError("years start at 0001")
    if match["hour"] is None:
        start = datetime(year, month, day)  # a calendar date, zoned below
        if match["day"] is not None:
            end = _plus_days(start, 1)
        elif match["month"] is not None:
            end = _plus_months(start, 1)
        else:
            end = _plus_months(start, 12)
        return _zoned(start, PILOT_ZONE), _zoned(end, PILOT_ZONE) if end else None
    zone: tzinfo = PILOT_ZONE
    if match["zone"] == "Z":
        zone = UTC
    elif match["zone"] is not None:
        sign = -1 if match["zone"][0] == "-" else 1
        hours, minutes = int(match["zone"][1:3]), int(match["zone"][4:6])
        if hours > 14 or minutes > 59:
            raise ValueError(f"{match['zone']} is not a time zone offset")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    fraction = match["fraction"] or ""
    start = datetime(
        year,
        month,
        day,
        int(match["hour"]),
        int(match["minute"]),
        int(match["second"] or 0),
        int((fraction + "000000")[:6]),
    )
    if fraction:
        step = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
    elif match["second"] is not None:
        step = timedelta(seconds=1)
    else:
        step = timedelta(minutes=1)
    lower = _zoned(start, zone)
    try:
        upper = lower + step if lower is not None else _zoned(start + step, zone)
    except OverflowError:
        upper = None
    return lower, upper


def _plus_days(start: datetime, days: int) -> datetime | None:
    try:
        return start + timedelta(days=days)
    except OverflowError:
        return None


def _plus_months(start: datetime, months: int) -> datetime | None:
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return None if year > 9999 else start.replace(year=year, month=month)


def _zoned(moment: datetime, zone: tzinfo) -> datetime | None:
    """A wall-clock time in `zone`, in UTC; None when it falls outside datetime's range."""
    try:
        return moment.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        return None
