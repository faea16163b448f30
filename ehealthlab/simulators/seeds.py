"""Named random streams, so a patient's (or a device's) randomness depends on who it is, not
on how many others were drawn before it.

numpy's `SeedSequence` derives independent streams from a root seed and a `spawn_key`;
`spawn()` numbers children in creation order, which would tie patient 7's stream to patients
1 to 6 existing. Here children are keyed by stable names instead (CRC-32 of a string, or a
non-negative integer as is), so adding a patient, a device or an episode kind leaves every
other stream unchanged.
"""

from __future__ import annotations

import zlib

import numpy as np

SeedLike = int | np.random.SeedSequence


def _key(name: str | int) -> int:
    if isinstance(name, int):
        if name < 0:
            raise ValueError(f"stream keys must be non-negative, got {name}")
        return name
    return zlib.crc32(name.encode("utf-8"))


def derive(parent: SeedLike, *names: str | int) -> np.random.SeedSequence:
    """The child stream of `parent` named by `names` (same names, same stream)."""
    root = parent if isinstance(parent, np.random.SeedSequence) else np.random.SeedSequence(parent)
    return np.random.SeedSequence(
        root.entropy, spawn_key=(*root.spawn_key, *(_key(n) for n in names))
    )


def generator(parent: SeedLike, *names: str | int) -> np.random.Generator:
    """A numpy Generator on the named child stream of `parent`."""
    return np.random.default_rng(derive(parent, *names))
