"""What a simulated patient hands to a simulated device: one act of measuring.

The physiology and behaviour models produce these (pure, seeded); the device simulators turn
them into contract messages. Keeping the hand-over this small lets either side change alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Measurement:
    """The values one device records at one true moment.

    `taken_at` is the true (simulated) time, timezone-aware UTC; the device adds its own clock
    error when it stamps the reading. `values` maps catalogue metric codes to values in the
    metric's canonical unit (a blood-pressure cuff's measurement carries bp_systolic,
    bp_diastolic and heart_rate together).
    """

    taken_at: datetime
    values: Mapping[str, float]
