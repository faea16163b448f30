"""Broadband per municipality: a connectivity profile from the SNAI class and travel time,
and a seeded outage schedule the device simulators consult.

No per-municipality broadband dataset ships (the reference table's bb_* columns are empty;
see store/reference/PROVENANCE.md), so every figure here is an assumption, documented in
docs/simulators.md and overridable from the scenario. The shape of the assumption: the
farther a municipality is from services (SNAI class A, poles, to F, ultra-peripheral), the
more often its link goes down, the longer it stays down, the slower and the more likely to
drop a session it is; within a class, a longer travel time to the pole makes it a little
worse.

Pure: `outage_schedule(profile, seed, start, end)` is a function of its arguments, and the
schedule answers `is_up(t)` and `next_up(t)` in O(log n).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import numpy as np

from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.seeds import SeedLike, derive

SNAI_CLASSES = ("A", "B", "C", "D", "E", "F")
INNER_AREA_CLASSES = frozenset({"D", "E", "F"})


@dataclass(frozen=True, slots=True)
class ConnectivityProfile:
    """How a municipality's link to the LAB behaves."""

    #: outages start at this mean rate while the link is up (a renewal process)
    outages_per_week: float
    #: outage length: log-normal with this median and shape
    outage_median_minutes: float
    outage_sigma: float
    #: no outage lasts longer than this (someone fixes it)
    outage_max_hours: float
    #: one-way delivery delay of a message while the link is up: log-normal
    latency_median_ms: float
    latency_sigma: float
    #: chance that a connection drops during a session (the device must reconnect and resend)
    session_drop_probability: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"broadband {f.name} must be a number >= 0, got {value}")
        if self.session_drop_probability > 1:
            raise InvalidInputError("broadband session_drop_probability must be <= 1")

    @property
    def mean_outage_minutes(self) -> float:
        """Mean of the (uncapped) log-normal outage length."""
        return self.outage_median_minutes * math.exp(self.outage_sigma**2 / 2)

    @property
    def expected_availability(self) -> float:
        """Long-run share of time the link is up (ignoring the cap, so a slight underestimate)."""
        if self.outages_per_week == 0:
            return 1.0
        mean_up = 7 * 24 * 60 / self.outages_per_week
        return mean_up / (mean_up + self.mean_outage_minutes)

    def latency_seconds(self, rng: np.random.Generator) -> float:
        """One message's delivery delay while the link is up."""
        return self.latency_median_ms / 1000 * math.exp(float(rng.normal(0.0, self.latency_sigma)))

    def session_drops(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.session_drop_probability)


#: assumed profile of a municipality at its class's reference travel time: outages per week,
#: median outage minutes, outage sigma, median latency ms, latency sigma, session drop chance
_CLASS_TABLE = {
    "A": (0.10, 20, 1.0, 25, 0.4, 0.002),
    "B": (0.15, 20, 1.0, 30, 0.4, 0.003),
    "C": (0.30, 30, 1.0, 40, 0.5, 0.005),
    "D": (0.70, 45, 1.2, 60, 0.6, 0.010),
    "E": (1.20, 60, 1.3, 90, 0.7, 0.020),
    "F": (2.00, 90, 1.4, 150, 0.8, 0.040),
}

DEFAULT_CLASS_PROFILES: Mapping[str, ConnectivityProfile] = MappingProxyType(
    {
        snai_class: ConnectivityProfile(
            outages_per_week=outages,
            outage_median_minutes=median,
            outage_sigma=sigma,
            outage_max_hours=48.0,
            latency_median_ms=latency,
            latency_sigma=jitter,
            session_drop_probability=drop,
        )
        for snai_class, (outages, median, sigma, latency, jitter, drop) in _CLASS_TABLE.items()
    }
)

#: typical travel time to the pole per class in the CMTo table (minutes; poles are 0)
DEFAULT_REFERENCE_TRAVEL_MINUTES: Mapping[str, float] = MappingProxyType(
    {"A": 0.0, "B": 0.0, "C": 17.0, "D": 34.0, "E": 52.0, "F": 71.0}
)


@dataclass(frozen=True)
class BroadbandAssumptions:
    """Class profiles and how travel time adjusts them; a scenario may override any part."""

    classes: Mapping[str, ConnectivityProfile] = field(
        default_factory=lambda: DEFAULT_CLASS_PROFILES
    )
    reference_travel_minutes: Mapping[str, float] = field(
        default_factory=lambda: DEFAULT_REFERENCE_TRAVEL_MINUTES
    )
    #: outage rate and latency scale as (travel time / reference) ** elasticity within a class
    travel_time_elasticity: float = 0.5
    #: ... bounded to this factor either way
    travel_time_max_factor: float = 1.5

    def with_class_overrides(
        self, overrides: Mapping[str, Mapping[str, float]]
    ) -> BroadbandAssumptions:
        """The same assumptions with some fields of some class profiles replaced."""
        classes = dict(self.classes)
        for snai_class, changes in overrides.items():
            if snai_class not in classes:
                raise InvalidInputError(
                    f"unknown SNAI class {snai_class!r}: use one of {', '.join(SNAI_CLASSES)}"
                )
            classes[snai_class] = override_profile(classes[snai_class], changes)
        return replace(self, classes=MappingProxyType(classes))


def override_profile(
    profile: ConnectivityProfile, changes: Mapping[str, float]
) -> ConnectivityProfile:
    """`profile` with the named fields replaced; unknown names are refused."""
    names = {f.name for f in fields(profile)}
    unknown = sorted(set(changes) - names)
    if unknown:
        known = ", ".join(sorted(names))
        raise InvalidInputError(
            f"unknown broadband setting(s) {', '.join(unknown)}: known are {known}"
        )
    return replace(profile, **{k: float(v) for k, v in changes.items()})


DEFAULT_BROADBAND = BroadbandAssumptions()


def connectivity_profile(
    snai_class: str,
    travel_time_minutes: float | None,
    assumptions: BroadbandAssumptions = DEFAULT_BROADBAND,
) -> ConnectivityProfile:
    """The assumed profile of a municipality of `snai_class` this far from its pole."""
    try:
        base = assumptions.classes[snai_class]
    except KeyError:
        raise InvalidInputError(
            f"unknown SNAI class {snai_class!r}: use one of {', '.join(SNAI_CLASSES)}"
        ) from None
    reference = assumptions.reference_travel_minutes.get(snai_class, 0.0)
    if not travel_time_minutes or reference <= 0:
        return base
    bound = assumptions.travel_time_max_factor
    factor = (travel_time_minutes / reference) ** assumptions.travel_time_elasticity
    factor = min(max(factor, 1 / bound), bound)
    return replace(
        base,
        outages_per_week=base.outages_per_week * factor,
        latency_median_ms=base.latency_median_ms * factor,
    )


@dataclass(frozen=True, slots=True)
class Outage:
    """The link is down from `start` (included) to `end` (excluded)."""

    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


class OutageSchedule:
    """When a municipality's link is down over [start, end): sorted, disjoint outages."""

    def __init__(self, start: datetime, end: datetime, outages: Iterable[Outage]) -> None:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("schedule bounds must be timezone-aware")
        if end < start:
            raise ValueError("a schedule ends after it starts")
        self.start, self.end = start.astimezone(UTC), end.astimezone(UTC)
        self.outages = _merged(
            Outage(max(o.start, self.start), min(o.end, self.end))
            for o in outages
            if o.end > self.start and o.start < self.end
        )
        self._starts = [o.start for o in self.outages]

    def _covering(self, t: datetime) -> Outage | None:
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self.outages[i].end:
            return self.outages[i]
        return None

    def is_up(self, t: datetime) -> bool:
        return self._covering(t) is None

    def next_up(self, t: datetime) -> datetime:
        """`t` if the link is up then, else the end of the outage under way."""
        outage = self._covering(t)
        return t if outage is None else outage.end

    def next_outage(self, t: datetime) -> Outage | None:
        """The outage under way at `t`, or the next one to start; None if none is left."""
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self.outages[i].end:
            return self.outages[i]
        return self.outages[i + 1] if i + 1 < len(self.outages) else None

    def downtime(self) -> timedelta:
        return sum((o.duration for o in self.outages), timedelta())

    @property
    def availability(self) -> float:
        span = (self.end - self.start).total_seconds()
        return 1.0 if span == 0 else 1 - self.downtime().total_seconds() / span

    def with_outages(self, extra: Iterable[Outage]) -> OutageSchedule:
        """This schedule with more outages (e.g. forced by a scenario) merged in."""
        return OutageSchedule(self.start, self.end, [*self.outages, *extra])


def _merged(outages: Iterable[Outage]) -> tuple[Outage, ...]:
    merged: list[Outage] = []
    for outage in sorted((o for o in outages if o.end > o.start), key=lambda o: o.start):
        if merged and outage.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Outage(last.start, max(last.end, outage.end))
        else:
            merged.append(outage)
    return tuple(merged)


#: outages are drawn from this long before the period, so one may be under way at its start
_WARM_UP = timedelta(days=3)


def outage_schedule(
    profile: ConnectivityProfile, seed: SeedLike, start: datetime, end: datetime
) -> OutageSchedule:
    """Outages over [start, end): up-times exponential, outage lengths log-normal (capped)."""
    rng = np.random.default_rng(derive(seed, "outages"))
    outages: list[Outage] = []
    if profile.outages_per_week > 0:
        mean_up = timedelta(weeks=1).total_seconds() / profile.outages_per_week
        cap = profile.outage_max_hours * 3600
        median = profile.outage_median_minutes * 60
        t = start - _WARM_UP
        while True:
            gap = float(rng.exponential(mean_up))
            if gap >= (end - t).total_seconds():
                break
            t += timedelta(seconds=gap)
            length = median * math.exp(float(rng.normal(0.0, profile.outage_sigma)))
            down = Outage(t, t + timedelta(seconds=min(length, cap)))
            outages.append(down)
            t = down.end
    return OutageSchedule(start, end, outages)
