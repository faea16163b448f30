"""A simulated device's battery: how long it lasts, and its charge state kept on disk.

`Battery` is the configuration (by default a battery that never runs out); `BatteryState`
is what a device remembers of it across restarts, written through to the device's
store-and-forward file (buffer.py). `device.Device` decides when the battery dies and when it
is recharged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.buffer import StoreAndForward

#: where the battery's state is kept in the device's buffer
CHARGED_AT_KEY = "battery_charged_at"
USED_KEY = "battery_used"
DEAD_SINCE_KEY = "battery_dead_since"


@dataclass(frozen=True, slots=True)
class Battery:
    """How long the device runs between charges; by default for ever.

    It is empty after `capacity_measurements` measurements or `capacity_days` since it was
    charged (the first use counts as a charge), whichever comes first. An empty device
    dies at once (its connection drops, so the Last Will says offline), takes nothing and
    sends nothing until it is recharged: `recharge_after` later on its own, or when the
    caller calls `Device.recharge`. What it had buffered stays on disk.
    """

    capacity_measurements: int | None = None
    capacity_days: float | None = None
    recharge_after: timedelta | None = None

    def __post_init__(self) -> None:
        if self.capacity_measurements is not None and self.capacity_measurements < 0:
            raise InvalidInputError("a battery's capacity in measurements is 0 or more")
        if self.capacity_days is not None and not self.capacity_days > 0:
            raise InvalidInputError("a battery's capacity in days is more than 0")

    @property
    def limited(self) -> bool:
        return self.capacity_measurements is not None or self.capacity_days is not None


@dataclass(slots=True)
class BatteryState:
    """A battery's lasting state, kept in memory and written through to the device's file."""

    charged_at: datetime | None
    used: int
    dead_since: datetime | None

    @classmethod
    def load(cls, buffer: StoreAndForward) -> BatteryState:
        def moment(key: str) -> datetime | None:
            text = buffer.get(key)
            return datetime.fromisoformat(text) if text else None

        return cls(moment(CHARGED_AT_KEY), int(buffer.get(USED_KEY) or 0), moment(DEAD_SINCE_KEY))

    def save(self, buffer: StoreAndForward) -> None:
        def text(moment: datetime | None) -> str:
            return moment.isoformat() if moment is not None else ""

        buffer.update(
            {
                CHARGED_AT_KEY: text(self.charged_at),
                DEAD_SINCE_KEY: text(self.dead_since),
                USED_KEY: str(self.used),
            }
        )
