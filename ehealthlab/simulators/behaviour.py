"""Simulated patients' behaviour: when they measure, how often they forget, and how that fades.

Pure and seeded. A `PatientSimulation` joins a patient's physiology with their adherence and
habits and yields, per device, the `Measurement`s the patient takes — true times (UTC), days
counted in Europe/Rome — lazily and in time order, so a whole pilot streams through
`merge_by_time` without being held in memory.

The care plan (indicators.md) gives, per metric, the readings expected per day; a device
measures at as many moments a day as its most frequent planned metric asks, at slots tied to
the patient's own day (waking, meals, bedtime). Numbers are documented, with their sources
or as assumptions, in docs/simulators.md.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from typing import TypeVar

import numpy as np

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.baseline import Baseline
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.episodes import DEFAULT_PHYSIOLOGY, PhysiologyAssumptions
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.simulators.physiology import MEALS, PatientPhysiology
from ehealthlab.simulators.seeds import derive, generator

ACTIVITY_TRACKER = "activity_tracker"

#: what one act of measuring records, per device type (the tracker's periodic sample; its
#: step count is a separate daily reading)
MEASURED_TOGETHER: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "blood_pressure_monitor": frozenset({"bp_systolic", "bp_diastolic", "heart_rate"}),
        "pulse_oximeter": frozenset({"spo2", "heart_rate"}),
        "weighing_scale": frozenset({"body_weight"}),
        "thermometer": frozenset({"body_temperature"}),
        "glucometer": frozenset({"blood_glucose"}),
        ACTIVITY_TRACKER: frozenset({"heart_rate", "respiratory_rate"}),
    }
)

_LUNCH, _DINNER = MEALS[1][0], MEALS[2][0]

#: preferred moments of the day per device type: (anchor, hours after it, and for a reading
#: that must come before a meal, the latest hour after the anchor). A plan with n readings a
#: day uses the first n; one with more than listed spreads them evenly over the waking day.
_SLOTS: Mapping[str, tuple[tuple[str, float, float | None], ...]] = MappingProxyType(
    {
        # ESH: morning (before drugs and breakfast) and evening
        "blood_pressure_monitor": (
            ("wake", 0.5, None),
            ("bed", -1.5, None),
            ("breakfast", 5.0, None),
        ),
        # after waking and voiding, before breakfast
        "weighing_scale": (("wake", 0.25, None), ("bed", -1.0, None)),
        # fasting, 2 h after lunch, before dinner, 2 h after dinner
        "glucometer": (
            ("breakfast", -0.25, -0.05),
            ("breakfast", _LUNCH + 2.0, None),
            ("breakfast", _DINNER - 0.25, _DINNER - 0.05),
            ("breakfast", _DINNER + 2.0, None),
        ),
        "pulse_oximeter": (("wake", 1.5, None), ("bed", -3.0, None), ("breakfast", 5.0, None)),
        "thermometer": (("wake", 1.0, None), ("bed", -2.5, None), ("breakfast", 5.5, None)),
    }
)


@dataclass(frozen=True, slots=True)
class Slot:
    """A habitual moment of use, local hours; `latest`: it must come before a meal."""

    hour: float
    latest: float | None = None


@dataclass(frozen=True)
class BehaviourAssumptions:
    """Population-level behaviour; every field may be overridden by a scenario."""

    #: share of days measured at enrolment: Beta with this mean and concentration
    initial_adherence_mean: float = 0.92
    initial_adherence_concentration: float = 20.0
    #: the level adherence settles to, as a share of the initial one (Beta)
    floor_ratio_mean: float = 0.72
    floor_ratio_concentration: float = 8.0
    #: e-folding time of the decline from initial to floor, days (log-normal)
    decline_days_median: float = 14.0
    decline_days_sigma: float = 0.5
    #: chance per day that a patient stops measuring for good
    dropout_per_day: float = 0.001
    #: patients who never take a reading
    non_starter_share: float = 0.02
    #: adherence on Saturdays and Sundays relative to weekdays
    weekend_factor: float = 0.95
    #: on a day the patient measures, chance that one planned reading is skipped (Beta mean)
    reading_skip_mean: float = 0.05
    #: chance that a reading is forgotten, then taken later the same day (Beta mean)
    late_share_mean: float = 0.08
    #: how much later, minutes (log-normal median; sigma 0.5)
    late_delay_median_minutes: float = 150.0
    #: a patient's habitual shift of every slot (normal sd; the slots already follow their own
    #: waking and meal times) and day-to-day scatter (median sd)
    habit_offset_sd_minutes: float = 15.0
    jitter_median_minutes: float = 20.0
    #: a forgotten reading not remembered by this local hour is not taken at all
    last_reading_local_hour: float = 23.5
    #: an activity tracker's heart-rate and respiratory-rate sampling interval
    tracker_sample_minutes: float = 120.0
    #: chance a tracker is worn on a day the patient does not measure (it needs no effort)
    tracker_worn_when_inactive: float = 0.5

    def with_overrides(self, overrides: Mapping[str, float]) -> BehaviourAssumptions:
        """The same assumptions with some fields replaced; unknown names are refused."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InvalidInputError(
                f"unknown behaviour setting(s) {', '.join(unknown)}: known are "
                + ", ".join(sorted(names))
            )
        for name, value in overrides.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"behaviour setting {name} must be a number >= 0")
        return replace(self, **{k: float(v) for k, v in overrides.items()})


DEFAULT_BEHAVIOUR = BehaviourAssumptions()


def _beta(rng: np.random.Generator, mean: float, concentration: float) -> float:
    mean = min(max(mean, 1e-6), 1 - 1e-6)
    return float(rng.beta(mean * concentration, (1 - mean) * concentration))


@dataclass(frozen=True, slots=True)
class AdherenceProfile:
    """How one patient keeps to the care plan, and how that changes over the weeks."""

    initial: float
    floor: float
    decline_days: float
    #: first day (0 = enrolment) with no readings ever again; None: never drops out
    dropout_day: int | None
    reading_skip: float
    late_share: float
    habit_offset_minutes: float
    jitter_minutes: float

    def day_probability(self, day: int) -> float:
        """Chance of measuring at all on the `day`-th day of the enrolment (weekday)."""
        if self.dropout_day is not None and day >= self.dropout_day:
            return 0.0
        return self.floor + (self.initial - self.floor) * math.exp(-day / self.decline_days)


def draw_adherence(
    rng: np.random.Generator, assumptions: BehaviourAssumptions = DEFAULT_BEHAVIOUR
) -> AdherenceProfile:
    a = assumptions
    initial = _beta(rng, a.initial_adherence_mean, a.initial_adherence_concentration)
    floor = initial * _beta(rng, a.floor_ratio_mean, a.floor_ratio_concentration)
    decline = a.decline_days_median * math.exp(float(rng.normal(0.0, a.decline_days_sigma)))
    dropout: int | None = None
    if rng.random() < a.non_starter_share:
        dropout = 0
    elif a.dropout_per_day > 0:
        dropout = int(rng.geometric(min(a.dropout_per_day, 1.0)))
    return AdherenceProfile(
        initial=initial,
        floor=floor,
        decline_days=max(decline, 0.5),
        dropout_day=dropout,
        reading_skip=_beta(rng, a.reading_skip_mean, 20.0),
        late_share=_beta(rng, a.late_share_mean, 20.0),
        habit_offset_minutes=float(rng.normal(0.0, a.habit_offset_sd_minutes)),
        jitter_minutes=a.jitter_median_minutes * math.exp(float(rng.normal(0.0, 0.4))),
    )


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One device of a patient and the part of the care plan it serves."""

    device_type: str
    #: metric -> readings expected per day (the enrolment's care plan for this device)
    care_plan: Mapping[str, int]

    def __post_init__(self) -> None:
        device = DEVICE_TYPES.get(self.device_type)
        if device is None:
            raise InvalidInputError(f"unknown device type {self.device_type!r}")
        foreign = sorted(set(self.care_plan) - device.metrics)
        if foreign:
            raise InvalidInputError(f"a {self.device_type} does not measure {', '.join(foreign)}")
        if any(n < 1 for n in self.care_plan.values()):
            raise InvalidInputError(f"{self.device_type}: readings per day must be >= 1")

    @property
    def readings_per_day(self) -> int:
        """Moments a day the device is used: its most frequent planned metric (at least 1)."""
        if self.device_type == ACTIVITY_TRACKER:
            return self.care_plan.get("steps", 1)
        return max(self.care_plan.values(), default=1)

    @property
    def measured_metrics(self) -> frozenset[str]:
        together = MEASURED_TOGETHER.get(self.device_type)
        return together if together is not None else frozenset(self.care_plan)


@dataclass(frozen=True, slots=True)
class DeviceMeasurement:
    """A measurement and the device type of the patient that took it."""

    device_type: str
    measurement: Measurement

    @property
    def taken_at(self) -> datetime:
        return self.measurement.taken_at


def slot_hours(device_type: str, count: int, baseline: Baseline) -> list[Slot]:
    """When a patient with `baseline` habitually uses the device, `count` times a day."""
    anchors = {
        "wake": baseline.wake_hour,
        "breakfast": baseline.breakfast_hour,
        "bed": baseline.bed_hour,
    }
    preferred = _SLOTS.get(device_type, ())
    if count <= len(preferred):
        slots = [
            Slot(anchors[anchor] + offset, None if latest is None else anchors[anchor] + latest)
            for anchor, offset, latest in preferred[:count]
        ]
        return sorted(slots, key=lambda s: s.hour)
    first, last = baseline.wake_hour + 0.5, baseline.bed_hour - 1.0
    step = (last - first) / max(count - 1, 1)
    return [Slot(first + i * step) for i in range(count)]


class PatientSimulation:
    """A patient over the days of their enrolment: physiology, adherence and devices.

    Everything is drawn from `seed` by name (physiology, adherence, and one stream per device
    and day), so the same seed gives the same measurements, asking for one device or one day
    does not change another, and any day can be regenerated alone (e.g. after a restart).
    """

    def __init__(
        self,
        *,
        conditions: Collection[Condition],
        devices: Sequence[DevicePlan],
        start: date,
        days: int,
        seed: np.random.SeedSequence,
        physiology: PhysiologyAssumptions = DEFAULT_PHYSIOLOGY,
        behaviour: BehaviourAssumptions = DEFAULT_BEHAVIOUR,
    ) -> None:
        self.start = start
        self.days = days
        self.devices = {d.device_type: d for d in devices}
        if len(self.devices) != len(devices):
            raise InvalidInputError("a patient has at most one device of each type")
        self.seed = seed
        self.behaviour = behaviour
        self.physiology = PatientPhysiology(
            conditions, derive(seed, "physiology"), start, days, physiology
        )
        self.adherence = draw_adherence(generator(seed, "adherence"), behaviour)
        self.active_days = self._draw_active_days(generator(seed, "active-days"))

    def _draw_active_days(self, rng: np.random.Generator) -> np.ndarray:
        draws = rng.random(self.days)
        active = np.zeros(self.days, dtype=bool)
        for day in range(self.days):
            weekday = (self.start + timedelta(days=day)).weekday()
            factor = self.behaviour.weekend_factor if weekday >= 5 else 1.0
            active[day] = draws[day] < self.adherence.day_probability(day) * factor
        return active

    # -- one device, one day ----------------------------------------------------------------

    def day_measurements(self, device_type: str, day: int) -> list[Measurement]:
        """What the patient measures with one device on the `day`-th day, in time order."""
        plan = self.devices.get(device_type)
        if plan is None:
            raise InvalidInputError(f"this patient has no {device_type}")
        if not 0 <= day < self.days:
            return []
        rng = generator(self.seed, "device", device_type, day)
        local_day = self.start + timedelta(days=day)
        midnight = datetime.combine(local_day, time(0), PILOT_ZONE)
        if device_type == ACTIVITY_TRACKER:
            taken = self._tracker_day(plan, day, midnight, rng)
        else:
            taken = self._planned_day(plan, day, midnight, rng)
        taken.sort(key=lambda m: m.taken_at)
        return taken

    def _at(self, midnight: datetime, hour: float) -> datetime:
        return (midnight + timedelta(hours=hour)).astimezone(UTC)

    def _planned_day(
        self, plan: DevicePlan, day: int, midnight: datetime, rng: np.random.Generator
    ) -> list[Measurement]:
        if not self.active_days[day]:
            return []
        a, b = self.adherence, self.physiology.baseline
        last_hour = min(self.behaviour.last_reading_local_hour, 23.99)
        out: list[Measurement] = []
        metrics = plan.measured_metrics
        for slot in slot_hours(plan.device_type, plan.readings_per_day, b):
            skipped, late = rng.random() < a.reading_skip, rng.random() < a.late_share
            hour = slot.hour + (a.habit_offset_minutes + rng.normal(0.0, a.jitter_minutes)) / 60
            if slot.latest is not None:
                hour = min(hour, slot.latest)
            if late:
                median = self.behaviour.late_delay_median_minutes
                hour += median * math.exp(float(rng.normal(0.0, 0.5))) / 60
            if skipped or hour >= last_hour:
                continue
            at = self._at(midnight, max(hour, 0.05))
            values = self.physiology.measure(metrics, at, rng, awake=True)
            out.append(Measurement(at, values))
        return out

    def _tracker_day(
        self, plan: DevicePlan, day: int, midnight: datetime, rng: np.random.Generator
    ) -> list[Measurement]:
        """A tracker samples heart and breathing rate through the waking day, and reports the
        day's steps (cumulative) at the end of it."""
        worn = bool(self.active_days[day]) or (
            rng.random() < self.behaviour.tracker_worn_when_inactive and not self._dropped_out(day)
        )
        if not worn:
            return []
        b = self.physiology.baseline
        out: list[Measurement] = []
        interval = max(self.behaviour.tracker_sample_minutes, 1.0) / 60
        hour = b.wake_hour + 0.5
        while hour < b.bed_hour:
            at = self._at(midnight, min(hour + float(rng.uniform(-5, 5)) / 60, 23.9))
            activity = abs(float(rng.normal(0.0, 4.0)))
            values = self.physiology.measure(
                MEASURED_TOGETHER[ACTIVITY_TRACKER], at, rng, activity_bpm=activity
            )
            out.append(Measurement(at, values))
            hour += interval
        count = plan.readings_per_day
        for i in range(count):
            hour = 24 - 1 / 60 - (count - 1 - i) * (24 - b.wake_hour) / count
            at = self._at(midnight, hour)
            out.append(Measurement(at, self.physiology.measure(("steps",), at, rng)))
        return out

    def _dropped_out(self, day: int) -> bool:
        dropout = self.adherence.dropout_day
        return dropout is not None and day >= dropout

    # -- streams ----------------------------------------------------------------------------

    def device_measurements(
        self, device_type: str, *, first_day: int = 0, end_day: int | None = None
    ) -> Iterator[Measurement]:
        """One device's measurements over days [first_day, end_day), lazily, in time order."""
        end = self.days if end_day is None else min(end_day, self.days)
        for day in range(max(first_day, 0), end):
            yield from self.day_measurements(device_type, day)

    def measurements(
        self,
        device_types: Iterable[str] | None = None,
        *,
        first_day: int = 0,
        end_day: int | None = None,
    ) -> Iterator[DeviceMeasurement]:
        """All (or some) devices' measurements merged in time order, lazily."""
        chosen = list(self.devices) if device_types is None else list(device_types)
        streams = [self._tagged(t, first_day=first_day, end_day=end_day) for t in chosen]
        return merge_by_time(streams, key=_taken_at)

    def _tagged(
        self, device_type: str, *, first_day: int, end_day: int | None
    ) -> Iterator[DeviceMeasurement]:
        for m in self.device_measurements(device_type, first_day=first_day, end_day=end_day):
            yield DeviceMeasurement(device_type, m)


def _taken_at(item: DeviceMeasurement) -> datetime:
    return item.measurement.taken_at


T = TypeVar("T")


def merge_by_time(streams: Iterable[Iterator[T]], key: Callable[[T], datetime]) -> Iterator[T]:
    """Time-ordered streams merged into one, lazily; ties keep the streams' order."""
    return heapq.merge(*streams, key=key)
