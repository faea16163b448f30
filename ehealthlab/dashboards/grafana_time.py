"""Times, durations and intervals written and read as Grafana's own code does.

Grafana's browser (rangeutil, in JavaScript) and its server (gtime and Go's time package) each
have their own way to round an interval, to parse a duration and to print an instant. The
expansion of a panel's SQL (macros.py) and the choice of its ``$__interval``
(query_context.py) must match them text for text, so they share these helpers. No I/O.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "EPOCH",
    "MS",
    "NS_PER_S",
    "epoch_ms",
    "epoch_ns",
    "epoch_seconds",
    "go_format_interval",
    "interval_to_ms",
    "parse_go_duration_ns",
    "rfc3339",
    "round_interval_ms",
    "seconds_to_hms",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
NS_PER_S = 1_000_000_000


# --- the browser: rangeutil -------------------------------------------------------------------


def seconds_to_hms(seconds: float) -> str:
    """``rangeutil.secondsToHms``: the ``$__interval`` text, in its largest whole unit only."""
    for unit, size, modulo in (
        ("y", 31536000, float("inf")),
        ("d", 86400, 31536000),
        ("h", 3600, 86400),
        ("m", 60, 3600),
        ("s", 1, 60),
    ):
        count = math.floor((seconds % modulo) / size)
        if count:
            return f"{count}{unit}"
    millis = math.floor(seconds * 1000.0)
    return f"{millis}ms" if millis else "less than a millisecond"


_INTERVAL_UNIT_S = {
    "y": 31536000,
    "M": 2592000,
    "w": 604800,
    "d": 86400,
    "h": 3600,
    "m": 60,
    "s": 1,
    "ms": 0.001,
}


def interval_to_ms(text: str) -> int:
    """``rangeutil.intervalToMs``: a unit-less number is seconds; the count's fraction is cut."""
    if re.fullmatch(r"\s*\d+(\.\d*)?\s*", text) and float(text):
        return int(float(text)) * 1000
    match = re.match(r"(-?\d+(?:\.\d+)?)(ms|[Mwdhmsy])", text)
    if not match:
        raise ValueError(f"invalid interval {text!r}")
    return round(_INTERVAL_UNIT_S[match.group(2)] * 1000 * int(float(match.group(1))))


# rangeutil.roundInterval: (below this many ms, use this interval in ms)
_ROUNDING = (
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10000),
    (17500, 15000),
    (25000, 20000),
    (45000, 30000),
    (90000, 60000),
    (210000, 120000),
    (450000, 300000),
    (750000, 600000),
    (1050000, 900000),
    (1500000, 1200000),
    (2700000, 1800000),
    (5400000, 3600000),
    (9000000, 7200000),
    (16200000, 10800000),
    (32400000, 21600000),
    (86400000, 43200000),
    (604800000, 86400000),
    (1814400000, 604800000),
    (3628800000, 2592000000),
)


def round_interval_ms(interval_ms: float) -> int:
    for below, rounded in _ROUNDING:
        if interval_ms < below:
            return rounded
    return 31536000000  # 1y


# --- the server: Go's durations ---------------------------------------------------------------


_GO_DURATION_UNITS = {
    "ns": 1,
    "us": 1000,
    "\u00b5s": 1000,  # Go accepts both micro signs
    "\u03bcs": 1000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
}


_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_go_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration``: an optional sign, then numbers with units (``1h30m``).

    Raises ``ValueError`` where Go returns an error (Go's overflow checks are left out).
    """
    negative = text.startswith("-")
    rest = text[1:] if text.startswith(("-", "+")) else text
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(text)
    total = 0
    while rest:
        part = _DURATION_PART.match(rest)
        if part is None or not part.group(0):
            raise ValueError(text)
        whole, digits, unit = part.group(1), part.group(2) or "", part.group(3)
        if not (whole or digits) or unit not in _GO_DURATION_UNITS:
            raise ValueError(text)
        size = _GO_DURATION_UNITS[unit]
        total += int(whole or "0") * size
        if digits and int(digits):  # Go adds the fraction through a float64, truncated
            total += int(float(int(digits)) * (float(size) / 10.0 ** len(digits)))
        rest = rest[part.end() :]
    return -total if negative else total


def go_format_interval(interval_ms: int) -> str:
    """``gtime.FormatInterval``: the largest whole unit among y (365 d), d, h, m, s, ms."""
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000)):
        if interval_ms >= size:
            return f"{interval_ms // size}{unit}"
    return f"{interval_ms // 1000}s" if interval_ms >= 1000 else f"{max(interval_ms, 1)}ms"


# --- instants ----------------------------------------------------------------------------------


def epoch_ms(instant: datetime) -> int:
    return (instant - EPOCH) // MS


def epoch_seconds(instant: datetime) -> int:
    return (instant - EPOCH) // timedelta(seconds=1)  # Go's Unix() floors


def epoch_ns(instant: datetime) -> int:
    return (instant - EPOCH) // timedelta(microseconds=1) * 1000


def rfc3339(instant: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: no fraction when whole, no trailing zeros."""
    text = f"{instant.year:04d}-{instant:%m-%dT%H:%M:%S}"
    fraction = f"{instant.microsecond:06d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"
