"""Clinical episodes: their kinds, rates and shapes, and what one under way does to the signals.

Pure. `PhysiologyAssumptions` holds what a scenario may override (the episodes' rates, by
`[episode_rates]`); `Episode` is one drawn episode with its rise, plateau and fall;
`EpisodeEffects` adds up what the episodes under way at a moment do to each signal.
`physiology.PatientPhysiology` draws a patient's episodes and applies them. Every number is
documented in docs/simulators.md.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

import numpy as np

from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.conditions import Condition

#: mean length of a month in days, to turn "per patient-month" rates into day rates
DAYS_PER_MONTH = 30.4375


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


def draw_episode(
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


@dataclass(slots=True)
class EpisodeEffects:
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
