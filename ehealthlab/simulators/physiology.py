"""Simulated patients' physiology: per-patient baselines, daily rhythms and clinical episodes.

Pure and seeded. A `PatientPhysiology` is built once per patient and period from a
`SeedSequence`: it draws the patient's baselines, day-to-day variation and episodes up front,
then answers "what would a device read at this moment" for any time in the period, with the
reading noise drawn from a generator the caller passes (one per device and day, see
behaviour.py), so one device's readings never depend on another device being simulated.

Every number below is documented in docs/simulators.md, which says which come from
published figures and which are assumptions; `PhysiologyAssumptions` holds the ones a
scenario may override (episode rates).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType

import numpy as np

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.seeds import derive

#: mean length of a month in days, to turn "per patient-month" rates into day rates
DAYS_PER_MONTH = 30.4375

#: days simulated before the first day, so episodes already under way at the start exist
BURN_IN_DAYS = 21


class Condition(StrEnum):
    HYPERTENSION = "hypertension"
    HEART_FAILURE = "heart_failure"
    COPD = "copd"
    DIABETES = "diabetes"


class EpisodeKind(StrEnum):
    """Episodes that move the signals; each has its own rate, shape and effects."""

    HYPERTENSIVE_SURGE = "hypertensive_surge"  # days of markedly raised BP
    HYPOTENSION = "hypotension"  # over-treatment, dehydration
    DECOMPENSATION = "hf_decompensation"  # fluid retention: weight gain
    EXACERBATION = "copd_exacerbation"  # SpO2 down, respiratory and heart rate up
    HYPERGLYCAEMIA = "hyperglycaemia"  # intercurrent illness, missed medication
    HYPOGLYCAEMIA = "hypoglycaemia"  # an hour or two of low glucose before a meal
    FEVER = "fever"  # any patient
    TACHYARRHYTHMIA = "tachyarrhythmia"  # e.g. atrial fibrillation with fast ventricular rate


@dataclass(frozen=True, slots=True)
class EpisodeModel:
    """How often an episode starts and what it looks like.

    `per_patient_month` is the rate at which episodes start while none of the same kind is
    under way (a renewal process: episodes of one kind never overlap). Durations and
    `magnitude` are drawn uniformly from their ranges; the magnitude's unit depends on the
    kind (mm[Hg], kg, SpO2 points, a glucose factor, mg/dL, °C, /min).
    """

    per_patient_month: float
    #: the patient must have one of these; None: any patient
    conditions: frozenset[Condition] | None
    onset_days: tuple[float, float]
    plateau_days: tuple[float, float]
    recovery_days: tuple[float, float]
    magnitude: tuple[float, float]

    def applies_to(self, conditions: Collection[Condition]) -> bool:
        return self.conditions is None or not self.conditions.isdisjoint(conditions)

    @property
    def mean_duration_days(self) -> float:
        return sum((a + b) / 2 for a, b in (self.onset_days, self.plateau_days, self.recovery_days))


_MINUTE = 1 / (24 * 60)

_HT, _HF, _COPD, _DM = (
    Condition.HYPERTENSION,
    Condition.HEART_FAILURE,
    Condition.COPD,
    Condition.DIABETES,
)

#: per kind: rate per patient-month, who has it, onset / plateau / recovery (days), magnitude
_EPISODE_TABLE: dict[EpisodeKind, tuple[float, frozenset[Condition] | None, tuple[float, ...]]] = {
    EpisodeKind.HYPERTENSIVE_SURGE: (
        0.35,
        frozenset({_HT}),
        (0.3, 1.0, 0.5, 2.0, 0.5, 1.5, 38, 58),
    ),
    EpisodeKind.HYPOTENSION: (0.03, frozenset({_HT, _HF}), (0.2, 0.5, 0.5, 1.5, 0.5, 1.0, 30, 48)),
    EpisodeKind.DECOMPENSATION: (0.10, frozenset({_HF}), (2.0, 4.0, 1.0, 4.0, 2.0, 4.0, 2.4, 4.0)),
    EpisodeKind.EXACERBATION: (0.15, frozenset({_COPD}), (1.0, 2.0, 2.0, 5.0, 5.0, 12.0, 3.5, 7.0)),
    EpisodeKind.HYPERGLYCAEMIA: (0.10, frozenset({_DM}), (0.5, 1.0, 0.5, 2.0, 0.5, 1.0, 0.7, 1.1)),
    EpisodeKind.HYPOGLYCAEMIA: (
        0.80,
        frozenset({_DM}),
        (
            20 * _MINUTE,
            30 * _MINUTE,
            30 * _MINUTE,
            90 * _MINUTE,
            30 * _MINUTE,
            60 * _MINUTE,
            48,
            68,
        ),
    ),
    EpisodeKind.FEVER: (0.06, None, (0.2, 0.5, 1.0, 3.0, 0.5, 1.5, 1.6, 2.8)),
    EpisodeKind.TACHYARRHYTHMIA: (
        0.03,
        frozenset({_HF, _HT}),
        (60 * _MINUTE, 180 * _MINUTE, 0.1, 1.0, 120 * _MINUTE, 360 * _MINUTE, 45, 65),
    ),
}

DEFAULT_EPISODES: Mapping[EpisodeKind, EpisodeModel] = MappingProxyType(
    {
        kind: EpisodeModel(
            per_patient_month=rate,
            conditions=conditions,
            onset_days=(shape[0], shape[1]),
            plateau_days=(shape[2], shape[3]),
            recovery_days=(shape[4], shape[5]),
            magnitude=(shape[6], shape[7]),
        )
        for kind, (rate, conditions, shape) in _EPISODE_TABLE.items()
    }
)


@dataclass(frozen=True)
class PhysiologyAssumptions:
    """What a scenario may change about the physiology: the episodes (rates and shapes)."""

    episodes: Mapping[EpisodeKind, EpisodeModel] = field(default_factory=lambda: DEFAULT_EPISODES)

    def with_rates(self, rates: Mapping[str, float]) -> PhysiologyAssumptions:
        """The same assumptions with some episode rates (per patient-month) replaced."""
        episodes = dict(self.episodes)
        for name, rate in rates.items():
            try:
                kind = EpisodeKind(name)
            except ValueError:
                known = ", ".join(k.value for k in EpisodeKind)
                raise InvalidInputError(
                    f"unknown episode kind {name!r}: known kinds are {known}"
                ) from None
            if not (rate >= 0 and math.isfinite(rate)):
                raise InvalidInputError(f"episode rate for {name} must be >= 0, got {rate}")
            episodes[kind] = replace(episodes[kind], per_patient_month=float(rate))
        return PhysiologyAssumptions(MappingProxyType(episodes))


DEFAULT_PHYSIOLOGY = PhysiologyAssumptions()


@dataclass(frozen=True, slots=True)
class Episode:
    """One episode of a patient, in days since the local midnight starting the period."""

    kind: EpisodeKind
    start: float
    onset: float
    plateau: float
    recovery: float
    magnitude: float

    @property
    def end(self) -> float:
        return self.start + self.onset + self.plateau + self.recovery

    def level(self, t: float) -> float:
        """0 outside the episode, rising linearly to 1, holding, then falling back to 0."""
        u = t - self.start
        if u <= 0 or t >= self.end:
            return 0.0
        if u < self.onset:
            return u / self.onset
        u -= self.onset
        if u < self.plateau:
            return 1.0
        return max(0.0, 1.0 - (u - self.plateau) / self.recovery)


@dataclass(frozen=True, slots=True)
class Baseline:
    """A patient's usual values and personal rhythm (drawn once per patient)."""

    sbp: float  # daytime systolic, mm[Hg]
    dbp: float
    dip: float  # nocturnal fall as a fraction of the daytime level
    morning_surge: float  # mm[Hg] added just after waking, fading in ~1.5 h
    white_coat: float  # mm[Hg] added to morning readings, halving as the patient gets used to it
    heart_rate: float
    weight: float  # kg
    weight_day_sd: float
    spo2: float
    respiratory_rate: float
    temperature: float
    fasting_glucose: float  # mg/dL
    meal_excursion: float  # mg/dL at the post-prandial peak
    steps: float  # median daily steps
    wake_hour: float  # local time
    bed_hour: float
    breakfast_hour: float


def _clipped_normal(
    rng: np.random.Generator, mean: float, sd: float, low: float, high: float
) -> float:
    return float(np.clip(rng.normal(mean, sd), low, high))


def draw_baseline(conditions: Collection[Condition], rng: np.random.Generator) -> Baseline:
    """Per-patient baselines from population distributions that depend on the conditions."""
    hypertensive = Condition.HYPERTENSION in conditions
    heart_failure = Condition.HEART_FAILURE in conditions
    copd = Condition.COPD in conditions
    diabetic = Condition.DIABETES in conditions
    if hypertensive:
        sbp = _clipped_normal(rng, 136, 7, 122, 148)
    elif heart_failure:
        sbp = _clipped_normal(rng, 122, 8, 112, 138)
    else:
        sbp = _clipped_normal(rng, 124, 8, 106, 138)
    dbp = sbp * _clipped_normal(rng, 0.60, 0.03, 0.52, 0.65)
    if heart_failure:
        heart_rate = _clipped_normal(rng, 68, 6, 60, 84)  # beta-blocked
    elif copd:
        heart_rate = _clipped_normal(rng, 80, 7, 64, 94)
    else:
        heart_rate = _clipped_normal(rng, 72, 7, 60, 88)
    if copd:
        spo2 = _clipped_normal(rng, 94.5, 1.0, 93.0, 97.0)
    elif heart_failure:
        spo2 = _clipped_normal(rng, 96.0, 0.8, 94.5, 98.0)
    else:
        spo2 = _clipped_normal(rng, 97.0, 0.7, 95.5, 98.5)
    if diabetic:
        fasting, excursion = (
            _clipped_normal(rng, 135, 15, 105, 165),
            _clipped_normal(rng, 55, 12, 30, 80),
        )
    else:
        fasting, excursion = (
            _clipped_normal(rng, 92, 6, 80, 104),
            _clipped_normal(rng, 30, 8, 15, 45),
        )
    median_steps = 3000.0 if copd else 3500.0 if heart_failure else 5000.0
    wake = _clipped_normal(rng, 6.75, 0.5, 5.5, 8.0)
    return Baseline(
        sbp=sbp,
        dbp=dbp,
        dip=_clipped_normal(rng, 0.10 if hypertensive else 0.13, 0.05, -0.02, 0.25),
        morning_surge=_clipped_normal(rng, 12 if hypertensive else 8, 5, 0, 25),
        white_coat=abs(float(rng.normal(0, 5 if hypertensive else 3))),
        heart_rate=heart_rate,
        weight=_clipped_normal(rng, 78, 14, 45, 140),
        weight_day_sd=0.30 if heart_failure else 0.35,
        spo2=spo2,
        respiratory_rate=_clipped_normal(rng, 18 if copd else 15, 2, 12, 24),
        temperature=_clipped_normal(rng, 36.6, 0.2, 36.1, 37.1),
        fasting_glucose=fasting,
        meal_excursion=excursion,
        steps=float(median_steps * math.exp(rng.normal(0, 0.4))),
        wake_hour=wake,
        bed_hour=_clipped_normal(rng, 22.75, 0.6, 21.5, 24.0),
        breakfast_hour=wake + _clipped_normal(rng, 0.75, 0.25, 0.25, 1.5),
    )


def _draw_episode(
    kind: EpisodeKind, model: EpisodeModel, start: float, rng: np.random.Generator
) -> Episode:
    return Episode(
        kind,
        start,
        float(rng.uniform(*model.onset_days)),
        float(rng.uniform(*model.plateau_days)),
        float(rng.uniform(*model.recovery_days)),
        float(rng.uniform(*model.magnitude)),
    )


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


@dataclass(slots=True)
class _Effects:
    """What the episodes under way add to the signals at one moment."""

    sbp: float = 0.0
    dbp: float = 0.0
    heart_rate: float = 0.0
    weight: float = 0.0
    spo2: float = 0.0
    respiratory_rate: float = 0.0
    fever: float = 0.0
    glucose_factor: float = 1.0
    glucose_low: float | None = None
    glucose_low_level: float = 0.0
    activity: float = 1.0

    def add(self, episode: Episode, level: float) -> None:
        m = episode.magnitude * level
        kind = episode.kind
        if kind is EpisodeKind.HYPERTENSIVE_SURGE:
            self.sbp += m
            self.dbp += 0.5 * m
            self.heart_rate += 0.1 * m
        elif kind is EpisodeKind.HYPOTENSION:
            self.sbp -= m
            self.dbp -= 0.5 * m
            self.heart_rate += 0.3 * m
            self.activity *= 1 - 0.3 * level
        elif kind is EpisodeKind.DECOMPENSATION:
            self.weight += m
            self.heart_rate += 4 * m
            self.spo2 -= 0.6 * m
            self.respiratory_rate += 1.5 * m
            self.activity *= 1 - 0.15 * m
        elif kind is EpisodeKind.EXACERBATION:
            self.spo2 -= m
            self.respiratory_rate += 1.2 * m
            self.heart_rate += 2.5 * m
            self.activity *= 1 - 0.1 * m
        elif kind is EpisodeKind.HYPERGLYCAEMIA:
            self.glucose_factor *= 1 + m
        elif kind is EpisodeKind.HYPOGLYCAEMIA:
            if level > self.glucose_low_level:
                self.glucose_low, self.glucose_low_level = episode.magnitude, level
            self.heart_rate += 12 * level
        elif kind is EpisodeKind.FEVER:
            self.fever += m
            self.heart_rate += 10 * m
            self.respiratory_rate += 2 * m
            self.spo2 -= 0.3 * m
            self.activity *= max(0.2, 1 - 0.25 * m)
        elif kind is EpisodeKind.TACHYARRHYTHMIA:
            self.heart_rate += m


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
                episode = _draw_episode(kind, model, t, rng)
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
                episode = _draw_episode(EpisodeKind.HYPOGLYCAEMIA, model, start, rng)
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

    def _effects(self, t: float) -> _Effects:
        effects = _Effects()
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

    def _glucose(self, row: int, hour: float, effects: _Effects, rng: np.random.Generator) -> float:
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

    def _steps_so_far(self, day: int, row: int, hour: float, effects: _Effects) -> float:
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
