"""A simulated patient's usual values and personal rhythm, drawn once per patient.

Pure and seeded: `draw_baseline` draws them from population distributions that depend on the
patient's conditions (docs/simulators.md gives each figure and says which are assumptions).
`physiology.PatientPhysiology` builds on them.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from ehealthlab.simulators.conditions import Condition


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
