"""Seeded percentile bootstrap of a mean (indicators.md: 2,000 resamples within the group).

Each interval has its own seed, derived from the evaluation's base seed and a stable hash of
what it is the interval of (grouping, group, indicator): reruns give the same interval, and
adding a group or an indicator does not shift anyone else's random numbers. Pure.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

RESAMPLES = 2000
#: resamples drawn at once, so a group of 10,000 patients needs ~16 MB, not 160 MB
_CHUNK = 200


def seed_for(base_seed: int, *parts: str) -> int:
    """A seed that depends only on the base seed and the parts (not on Python's hash)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return (base_seed * 0x9E3779B97F4A7C15 + int.from_bytes(digest[:8], "big")) % 2**63


def mean_ci95(
    values: npt.NDArray[np.float64], seed: int, resamples: int = RESAMPLES
) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of the means of `resamples` resamples with
    replacement; None for an empty sample."""
    n = values.size
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        picks = rng.integers(0, n, size=(rows, n))
        means[start : start + rows] = values[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def difference_ci95(
    first: npt.NDArray[np.float64],
    second: npt.NDArray[np.float64],
    seed: int,
    resamples: int = RESAMPLES,
) -> tuple[float, float] | None:
    """Interval of mean(first) - mean(second), each resampled within itself."""
    if first.size == 0 or second.size == 0:
        return None
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        a = first[rng.integers(0, first.size, size=(rows, first.size))].mean(axis=1)
        b = second[rng.integers(0, second.size, size=(rows, second.size))].mean(axis=1)
        differences[start : start + rows] = a - b
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)
