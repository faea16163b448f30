"""The difference of an indicator between two groups, with its 95% interval. Pure.

The report sets inner areas against centres (indicators.md, "Output": "each difference with
its interval"). Patients are the unit resampled, as for the means: a mean's samples are
resampled within each group; a ratio is recomputed as Σ numerator ÷ Σ denominator × factor
over each resample of each group's patients (a cluster bootstrap, since a patient's readings
are not independent of each other). Indicators without per-patient parts (percentiles,
counts, the economic model, reach) get the difference without an interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ehealthlab.evaluation.bootstrap import RESAMPLES, difference_ci95, seed_for
from ehealthlab.evaluation.compute import GroupResult
from ehealthlab.evaluation.dataset import FloatArray
from ehealthlab.evaluation.registry import BY_ID, Kind, Mean

_CHUNK = 100


@dataclass(frozen=True, slots=True)
class Difference:
    indicator: str
    first: float | None
    second: float | None
    difference: float | None
    ci95: tuple[float, float] | None


def _number(value: object) -> float | None:
    if isinstance(value, Mean):
        return value.value
    if isinstance(value, int | float):
        return float(value)
    return None


def difference(first: GroupResult, second: GroupResult, indicator_id: str, seed: int) -> Difference:
    """first − second for one indicator; the interval when the indicator has one."""
    indicator = BY_ID[indicator_id]
    a, b = _number(first.values.get(indicator_id)), _number(second.values.get(indicator_id))
    if a is None or b is None:
        return Difference(indicator_id, a, b, None, None)
    key = seed_for(seed, "difference", first.key, second.key, indicator_id)
    interval: tuple[float, float] | None = None
    if indicator.kind is Kind.MEAN and indicator_id in first.samples:
        interval = difference_ci95(first.samples[indicator_id], second.samples[indicator_id], key)
    elif indicator.kind is Kind.RATIO and indicator.denominator is not None:
        parts = (indicator.numerator.component, indicator.denominator.component)
        if all(p in first.per_patient and p in second.per_patient for p in parts):
            interval = _ratio_difference_ci95(first, second, parts, indicator.factor, key)
    return Difference(indicator_id, a, b, a - b, interval)


def _ratio_difference_ci95(
    first: GroupResult,
    second: GroupResult,
    parts: tuple[str, str],
    factor: float,
    seed: int,
) -> tuple[float, float] | None:
    rng = np.random.default_rng(seed)
    draws = [_ratios(group, parts, factor, rng) for group in (first, second)]
    differences = draws[0] - draws[1]
    differences = differences[~np.isnan(differences)]
    if differences.size < RESAMPLES // 2:  # mostly empty denominators: no honest interval
        return None
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def _ratios(
    group: GroupResult, parts: tuple[str, str], factor: float, rng: np.random.Generator
) -> FloatArray:
    numerator, denominator = (group.per_patient[p] for p in parts)
    n = numerator.size
    out = np.full(RESAMPLES, np.nan)
    if n == 0:
        return out
    for start in range(0, RESAMPLES, _CHUNK):
        rows = min(_CHUNK, RESAMPLES - start)
        picks = rng.integers(0, n, size=(rows, n))
        top, bottom = numerator[picks].sum(axis=1), denominator[picks].sum(axis=1)
        out[start : start + rows] = np.divide(
            top * factor, bottom, out=np.full(rows, np.nan), where=bottom > 0
        )
    return out
