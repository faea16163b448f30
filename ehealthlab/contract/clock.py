"""The contract's rules for a device's clock: how far off it may be, and how far ahead.

A device clock that is off by more than the tolerance is treated as wrong, and its
readings' times are moved by the offset between its `sent_at` and the receive time; a
reading still after the receive time, past a small allowance, is refused. Validation applies
these rules; the gateway's conformance report, the dashboards and the FHIR delivery quote
the same tolerance, so it is written down once, here.
"""

from __future__ import annotations

from datetime import timedelta

#: a device clock further off than this, either way, is treated as wrong and corrected
CLOCK_TOLERANCE_S = 120.0
#: a reading more than this after the receive time (once corrected) is refused
FUTURE_TOLERANCE = timedelta(minutes=5)


def clock_is_wrong(offset: timedelta) -> bool:
    return abs(offset.total_seconds()) > CLOCK_TOLERANCE_S
