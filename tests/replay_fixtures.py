"""What the tests of the alert-threshold replay share: the period replayed (it holds the
spring daylight-saving change), its first instant, and `utc` for instants written by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime

from ehealthlab.contract.pilot_time import day_start
from ehealthlab.evaluation.replay import Period

# the period holds the spring daylight-saving change (Sunday 29 March 2026, 02:00 → 03:00)
PERIOD = Period(date(2026, 3, 28), date(2026, 4, 2))
START = day_start(PERIOD.start)  # 2026-03-27T23:00Z


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)
