"""The pilot's time zone and its days, beneath every component.

Calendar days are Europe/Rome days (indicators.md, "Conventions"): a reading belongs to the
day of its clock-corrected measurement time, an alert to the day of its reading, an
enrolment is active on a day at 12:00 local time. The store computes the same day in SQL
(`ehl_pilot_day`, migration 0001); this module is the Python side, so ingest, the
simulators, FHIR and the evaluation agree on where a day begins.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

PILOT_ZONE = ZoneInfo("Europe/Rome")


def pilot_day(moment: datetime) -> date:
    """The pilot's calendar day of a timezone-aware moment."""
    return moment.astimezone(PILOT_ZONE).date()


def day_start(day: date) -> datetime:
    """Midnight at the start of a pilot day, in UTC (23 or 25 hours from the previous one
    around the daylight-saving changes)."""
    return datetime.combine(day, time(0), PILOT_ZONE).astimezone(UTC)
