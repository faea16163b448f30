"""What a simulated device writes: its clock, its readings and its readings messages (pure).

A `Measurement` carries true times and canonical values; a real device shows neither. It
stamps with its own clock (set wrong by a fixed offset, drifting a few ppm), shows values
at its display's resolution, and may be set to another accepted unit (a glucometer in
mmol/L). This module turns one into the other, so the device simulator only stores and
sends, and the tests can check every device type against the contract's own validator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import orjson

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS, device_type
from ehealthlab.contract.messages import MAX_PAYLOAD_BYTES, MAX_READINGS, READINGS_SCHEMA
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.measurement import Measurement

#: a reading as the contract writes it: seq, metric, value, unit, at
Reading = dict[str, Any]

#: the step a device displays a value in, by unit (whole numbers unless listed)
RESOLUTION: Mapping[str, float] = {
    "mm[Hg]": 1,
    "kPa": 0.1,
    "/min": 1,
    "%": 1,
    "kg": 0.1,
    "g": 100,
    "[lb_av]": 0.2,
    "Cel": 0.1,
    "[degF]": 0.1,
    "mg/dL": 1,
    "mmol/L": 0.1,
    "{steps}": 1,
}

#: room a message needs besides its readings (schema, msg_id of 64, sent_at, brackets)
ENVELOPE_BYTES = 200

#: catalogue order, so the readings of one measurement always come in the same order
_METRIC_ORDER = {code: position for position, code in enumerate(METRICS)}


@dataclass(frozen=True, slots=True)
class DeviceClock:
    """A device's real-time clock: set `offset_s` wrong at `set_at`, gaining `drift_ppm`
    millionths of a second per second since (cheap quartz: ±20 to 50 ppm, 2 to 4 s a day).

    `zone` is the UTC offset the device writes its timestamps in; the moment is the same.
    """

    offset_s: float = 0.0
    drift_ppm: float = 0.0
    set_at: datetime | None = None
    zone: tzinfo = UTC

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset_s) and math.isfinite(self.drift_ppm)):
            raise InvalidInputError("a device clock's offset and drift must be finite numbers")
        if self.drift_ppm and self.set_at is None:
            raise InvalidInputError("a drifting clock needs set_at: when it was last set")
        if self.set_at is not None and self.set_at.utcoffset() is None:
            raise InvalidInputError("set_at must be timezone-aware")

    def error_at(self, true_time: datetime) -> timedelta:
        """How far the device clock is ahead of the truth at `true_time` (negative: behind)."""
        elapsed = (true_time - self.set_at).total_seconds() if self.set_at is not None else 0.0
        return timedelta(seconds=self.offset_s + self.drift_ppm * 1e-6 * elapsed)

    def read(self, true_time: datetime, *, error_from: datetime | None = None) -> datetime:
        """What the device shows at `true_time`, to the whole second as devices stamp.

        `error_from` takes the clock's error at another moment: a backfill or accelerated
        run sends at the wall-clock time while its simulated clock is elsewhere.
        """
        error = self.error_at(true_time if error_from is None else error_from)
        return (true_time + error).astimezone(self.zone).replace(microsecond=0)


def stamp(moment: datetime) -> str:
    """`moment` the way the contract writes timestamps (RFC 3339 with its offset)."""
    return moment.isoformat()


def device_value(metric_code: str, canonical: float, unit: str) -> float | int:
    """`canonical` shown in `unit` at the device's resolution (an int for whole steps)."""
    conversion = METRICS[metric_code].conversions[unit]
    shown = canonical * conversion.denominator / conversion.numerator - conversion.offset
    step = RESOLUTION.get(unit, 1)
    if step >= 1:
        return int(round(shown / step) * step)
    decimals = max(0, -math.floor(math.log10(step)))
    return round(round(shown / step) * step, decimals)


def check_units(device_type_code: str, units: Mapping[str, str]) -> None:
    """Refuse a unit setting the contract would not accept (InvalidInputError)."""
    entry = device_type(device_type_code)
    for metric_code, unit in units.items():
        if metric_code not in entry.metrics:
            raise InvalidInputError(f"a {device_type_code} does not measure {metric_code}")
        if unit not in METRICS[metric_code].conversions:
            accepted = ", ".join(METRICS[metric_code].accepted_units)
            raise InvalidInputError(f"{metric_code} in {unit!r}: the contract accepts {accepted}")


@dataclass(frozen=True, slots=True)
class ReadingsBuilder:
    """Turns the measurements of one device into contract readings.

    `units` maps a metric to the accepted unit the device is set to (canonical otherwise).
    """

    device_type: str
    clock: DeviceClock = field(default_factory=DeviceClock)
    units: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_units(self.device_type, self.units)

    def readings(self, measurement: Measurement, first_seq: int) -> list[Reading]:
        """The measurement's readings, `seq` from `first_seq` on, sharing one `at`.

        Non-finite values are left out, as the contract asks of a failed measurement; a
        metric the device type does not measure is a mistake of the caller.
        """
        measured = DEVICE_TYPES[self.device_type].metrics
        foreign = sorted(set(measurement.values) - measured)
        if foreign:
            raise InvalidInputError(f"a {self.device_type} does not measure {', '.join(foreign)}")
        at = stamp(self.clock.read(measurement.taken_at))
        readings: list[Reading] = []
        for metric_code in sorted(measurement.values, key=_METRIC_ORDER.__getitem__):
            value = measurement.values[metric_code]
            if not math.isfinite(value):
                continue
            unit = self.units.get(metric_code, METRICS[metric_code].unit)
            readings.append(
                {
                    "seq": first_seq + len(readings),
                    "metric": metric_code,
                    "value": device_value(metric_code, value, unit),
                    "unit": unit,
                    "at": at,
                }
            )
        return readings

    def sent_at(self, true_time: datetime, *, clock_at: datetime | None = None) -> str:
        """The device clock at the moment it sends (see DeviceClock.read for `clock_at`)."""
        return stamp(self.clock.read(true_time, error_from=clock_at))


def readings_message(msg_id: str, sent_at: str, readings: Sequence[Reading]) -> dict[str, Any]:
    """A readings message of the contract (readings oldest first, as stored)."""
    return {
        "schema": READINGS_SCHEMA,
        "msg_id": msg_id,
        "sent_at": sent_at,
        "readings": list(readings),
    }


def encode(message: Mapping[str, Any]) -> bytes:
    """A message as UTF-8 JSON, the way a device sends it."""
    return orjson.dumps(message)


def msg_id_for(first_seq: int, last_seq: int) -> str:
    """A message's id from the seqs it carries: unique per device since seqs never repeat,
    and the same when the same readings are sent again."""
    return f"s{first_seq}-{last_seq}"


def fits(readings: int, payload_bytes: int, *, max_readings: int = MAX_READINGS) -> bool:
    """Whether a message of this many readings (this many bytes of them) is within the
    contract's limits: at most `max_readings` (≤ 500) and 64 KiB."""
    return readings <= min(max_readings, MAX_READINGS) and (
        payload_bytes + ENVELOPE_BYTES <= MAX_PAYLOAD_BYTES
    )
