"""Simulated patients' physiology: their signals over time, and what a device reads of them.

Pure and seeded. A `PatientPhysiology` is built once per patient and period from a
`SeedSequence`: it draws the patient's baseline (baseline.py), day-to-day variation and
episodes (episodes.py) up front, then answers "what would a device read at this moment" for
any time in the period, with the reading noise drawn from a generator the caller passes (one
per device and day, see behaviour.py), so one device's readings never depend on another
device being simulated.

Every number below is documented in docs/simulators.md, which says which come from
published figures and which are assumptions; `episodes.PhysiologyAssumptions` holds the ones
a scenario may override (episode rates).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import numpy as np

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.baseline import Baseline, draw_baseline
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.episodes import (
    DAYS_PER_MONTH,
    DEFAULT_PHYSIOLOGY,
    Episode,
    EpisodeEffects,
    EpisodeKind,
    EpisodeModel,
    PhysiologyAssumptions,
    draw_episode,
)
from ehealthlab.simulators.seeds import derive

#: days simulated before the first day, so episodes already under way at the start exist
BURN_IN_DAYS = 21


def _ar1(rng: np.random.Generator, n: int, sd: float, phi: float) -> np.ndarray:
    """A stationary AR(1) series: day-to-day variation that persists a little."""
    shocks = rng.normal(0.0, sd, n)
    out = np.empty(n)
    out[0] = shocks[0]
    scale = math.sqrt(1 - phi * phi)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + scale * shocks[i]
    return out


@dataclass(frozen=True, slots=True)
class _DayEffects:
    bp: np.ndarray
    heart_rate: np.ndarray
    weight: np.ndarray  # slow drift plus day noise, kg
    spo2: np.ndarray
    respiratory_rate: np.ndarray
    temperature: np.ndarray
    glucose: np.ndarray  # log factor
    steps: np.ndarray  # log factor
    meal_shift: np.ndarray  # hours, (days, 3)


def _day_effects(rng: np.random.Generator, n: int, baseline: Baseline) -> _DayEffects:
    drift = np.cumsum(rng.normal(0.0, 0.04, n))
    drift -= drift[BURN_IN_DAYS] if n > BURN_IN_DAYS else 0.0
    return _DayEffects(
        bp=_ar1(rng, n, 4.0, 0.5),
        heart_rate=_ar1(rng, n, 3.0, 0.5),
        weight=drift + rng.normal(0.0, baseline.weight_day_sd, n),
        spo2=_ar1(rng, n, 0.4, 0.5),
        respiratory_rate=_ar1(rng, n, 0.8, 0.5),
        temperature=rng.normal(0.0, 0.1, n),
        glucose=_ar1(rng, n, 0.08, 0.5),
        steps=rng.normal(0.0, 0.35, n),
        meal_shift=rng.normal(0.0, 0.33, (n, 3)),
    )


#: metrics whose values devices report as whole numbers; the rest get one decimal
_WHOLE_NUMBERS = frozenset(
    {
        "bp_systolic",
        "bp_diastolic",
        "heart_rate",
        "spo2",
        "respiratory_rate",
        "blood_glucose",
        "steps",
    }
)

#: meal times (hours after breakfast) and the relative height of their post-prandial peak
MEALS = ((0.0, 0.8), (5.5, 1.0), (12.5, 1.0))
_GLUCOSE_PEAK_HOURS = 1.0


def _within_catalogue(metric: str, value: float) -> float:
    entry = METRICS[metric]
    rounded = round(value) if metric in _WHOLE_NUMBERS else round(value, 1)
    return float(min(max(rounded, entry.minimum), entry.maximum))


class PatientPhysiology:
    """One patient's signals over a period of local (Europe/Rome) days.

    Built from the patient's conditions and a seed: the same inputs give the same patient.
    `measure` returns what a device reads at a true moment, drawing only the reading noise
    from the generator it is given.
    """

    def __init__(
        self,
        conditions: Iterable[Condition],
        seed: np.random.SeedSequence,
        first_day: date,
        days: int,
        assumptions: PhysiologyAssumptions = DEFAULT_PHYSIOLOGY,
    ) -> None:
        if days < 1:
            raise ValueError(f"a physiology covers at least one day, got {days}")
        self.conditions = frozenset(conditions)
        self.first_day = first_day
        self.days = days
        self.origin = datetime.combine(first_day, time(0), PILOT_ZONE).astimezone(UTC)
        self.baseline = draw_baseline(
            self.conditions, np.random.default_rng(derive(seed, "baseline"))
        )
        self._effects_by_day = _day_effects(
            np.random.default_rng(derive(seed, "days")), BURN_IN_DAYS + days + 1, self.baseline
        )
        self.episodes = self._draw_episodes(seed, assumptions)

    # -- episodes ---------------------------------------------------------------------------

    def _draw_episodes(
        self, seed: np.random.SeedSequence, assumptions: PhysiologyAssumptions
    ) -> tuple[Episode, ...]:
        episodes: list[Episode] = []
        for kind, model in assumptions.episodes.items():
            if model.per_patient_month <= 0 or not model.applies_to(self.conditions):
                continue
            rng = np.random.default_rng(derive(seed, "episodes", kind.value))
            if kind is EpisodeKind.HYPOGLYCAEMIA:
                episodes.extend(self._before_meals(model, rng))
                continue
            mean_gap = DAYS_PER_MONTH / model.per_patient_month
            t = -float(BURN_IN_DAYS)
            while True:
                t += float(rng.exponential(mean_gap))
                if t >= self.days:
                    break
                episode = draw_episode(kind, model, t, rng)
                if episode.end > 0:
                    episodes.append(episode)
                t = episode.end
        episodes.sort(key=lambda e: (e.start, e.kind.value))
        return tuple(episodes)

    def _before_meals(self, model: EpisodeModel, rng: np.random.Generator) -> list[Episode]:
        """Hypoglycaemia comes late after the last meal: in the hour or so before one.

        A Poisson number per day (at most one per meal), so the rate is exact however high.
        """
        per_day = rng.poisson(model.per_patient_month / DAYS_PER_MONTH, BURN_IN_DAYS + self.days)
        found: list[Episode] = []
        for row in np.flatnonzero(per_day):
            day = int(row) - BURN_IN_DAYS
            count = min(int(per_day[row]), len(MEALS))
            for meal in sorted(rng.choice(len(MEALS), size=count, replace=False)):
                offset, _ = MEALS[int(meal)]
                hour = self.baseline.breakfast_hour + offset - float(rng.uniform(0.5, 1.5))
                start = self._days_since_origin(self._local(day, hour))
                episode = draw_episode(EpisodeKind.HYPOGLYCAEMIA, model, start, rng)
                if episode.end > 0:
                    found.append(episode)
        return found

    def _local(self, day: int, hour: float) -> datetime:
        midnight = datetime.combine(self.first_day + timedelta(days=day), time(0), PILOT_ZONE)
        return (midnight + timedelta(hours=hour)).astimezone(UTC)

    def _days_since_origin(self, at: datetime) -> float:
        return (at - self.origin).total_seconds() / 86400

    def episode_bounds(self, episode: Episode) -> tuple[datetime, datetime]:
        """An episode's true start and end."""
        return (
            self.origin + timedelta(days=episode.start),
            self.origin + timedelta(days=episode.end),
        )

    def _effects(self, t: float) -> EpisodeEffects:
        effects = EpisodeEffects()
        for episode in self.episodes:
            if episode.start > t:
                break
            if t < episode.end:
                effects.add(episode, episode.level(t))
        return effects

    # -- readings ---------------------------------------------------------------------------

    def measure(
        self,
        metrics: Iterable[str],
        at: datetime,
        rng: np.random.Generator,
        *,
        awake: bool | None = None,
        activity_bpm: float = 0.0,
    ) -> dict[str, float]:
        """What a device measuring `metrics` reads at the true moment `at`.

        Values are in the metrics' canonical units, rounded as devices display them and
        always within the catalogue's plausible ranges. `awake`: whether the patient is up
        (True for anyone taking a reading themselves; None: from their usual sleep hours,
        for passive sensors). `activity_bpm` adds to the heart rate what light activity does
        (a wrist tracker samples during the day, not at rest).
        """
        local = at.astimezone(PILOT_ZONE)
        day = (local.date() - self.first_day).days
        if not -BURN_IN_DAYS <= day <= self.days:
            raise ValueError(f"{at.isoformat()} is outside this patient's simulated period")
        row = day + BURN_IN_DAYS
        hour = local.hour + local.minute / 60 + local.second / 3600
        effects = self._effects(self._days_since_origin(at))
        values: dict[str, float] = {}
        wanted = set(metrics)
        b = self.baseline
        if awake is None:
            awake = b.wake_hour <= hour < b.bed_hour
        # someone measuring before their usual waking time has just got up
        woke = b.wake_hour if hour >= b.wake_hour or not awake else max(hour - 0.25, 0.0)
        since_waking = hour - woke
        surge_shape = math.exp(-since_waking / 1.5) if awake and since_waking >= 0 else 0.0
        if wanted & {"bp_systolic", "bp_diastolic"}:
            circadian = 1.0 if awake else 1.0 - b.dip
            habituation = 0.5 + 0.5 * math.exp(-max(day, 0) / 7)
            white_coat = b.white_coat * habituation if 5 <= hour < 11 else 0.0
            day_bp = float(self._effects_by_day.bp[row])
            noise = float(rng.normal(0.0, 7.0))
            sbp = (
                b.sbp * circadian
                + b.morning_surge * surge_shape
                + white_coat
                + day_bp
                + effects.sbp
                + noise
            )
            dbp = (
                b.dbp * circadian
                + 0.5 * (b.morning_surge * surge_shape + white_coat)
                + 0.6 * day_bp
                + effects.dbp
                + 0.4 * noise
                + float(rng.normal(0.0, 4.0))
            )
            dbp = min(dbp, sbp - 15.0)  # pulse pressure stays positive and plausible
            values["bp_systolic"] = sbp
            values["bp_diastolic"] = dbp
        if "heart_rate" in wanted:
            values["heart_rate"] = (
                b.heart_rate
                + float(self._effects_by_day.heart_rate[row])
                + (0.0 if awake else -8.0)
                + 4.0 * surge_shape
                + effects.heart_rate
                + activity_bpm
                + float(rng.normal(0.0, 5.0))
            )
        if "body_weight" in wanted:
            after_breakfast = min(max((hour - b.breakfast_hour) / 14, 0.0), 1.0)
            values["body_weight"] = (
                b.weight
                + float(self._effects_by_day.weight[row])
                + 0.5 * after_breakfast
                + effects.weight
                + float(rng.normal(0.0, 0.1))
            )
        if "spo2" in wanted:
            values["spo2"] = min(
                100.0,
                b.spo2
                + float(self._effects_by_day.spo2[row])
                + effects.spo2
                + float(rng.normal(0.0, 0.7)),
            )
        if "respiratory_rate" in wanted:
            values["respiratory_rate"] = (
                b.respiratory_rate
                + float(self._effects_by_day.respiratory_rate[row])
                + effects.respiratory_rate
                + float(rng.normal(0.0, 1.2))
            )
        if "body_temperature" in wanted:
            evening_peak = math.cos(2 * math.pi * (hour - 17) / 24)
            values["body_temperature"] = (
                b.temperature
                + 0.3 * evening_peak
                + float(self._effects_by_day.temperature[row])
                + effects.fever * (0.85 + 0.15 * evening_peak)
                + float(rng.normal(0.0, 0.12))
            )
        if "blood_glucose" in wanted:
            values["blood_glucose"] = self._glucose(row, hour, effects, rng)
        if "steps" in wanted:
            values["steps"] = self._steps_so_far(day, row, hour, effects)
        unknown = wanted - values.keys()
        if unknown:
            raise InvalidInputError(f"no model for metric(s) {', '.join(sorted(unknown))}")
        return {metric: _within_catalogue(metric, value) for metric, value in values.items()}

    def _glucose(
        self, row: int, hour: float, effects: EpisodeEffects, rng: np.random.Generator
    ) -> float:
        b = self.baseline
        level = b.fasting_glucose * math.exp(float(self._effects_by_day.glucose[row]))
        for (offset, weight), shift in zip(
            MEALS, self._effects_by_day.meal_shift[row], strict=True
        ):
            since = (hour - b.breakfast_hour - offset - float(shift)) / _GLUCOSE_PEAK_HOURS
            if since > 0:
                level += weight * b.meal_excursion * since * math.exp(1 - since)
        level *= effects.glucose_factor
        if effects.glucose_low is not None and effects.glucose_low < level:
            level += (effects.glucose_low - level) * effects.glucose_low_level
        return level * math.exp(float(rng.normal(0.0, 0.06)))

    def _steps_so_far(self, day: int, row: int, hour: float, effects: EpisodeEffects) -> float:
        """Steps counted since waking: the day's total scaled by the waking time elapsed."""
        b = self.baseline
        weekday = (self.first_day + timedelta(days=day)).weekday()
        total = (
            b.steps
            * math.exp(float(self._effects_by_day.steps[row]))
            * (0.85 if weekday >= 5 else 1.0)
            * effects.activity
        )
        elapsed = min(max((hour - b.wake_hour) / (b.bed_hour - b.wake_hour), 0.0), 1.0)
        return total * elapsed
