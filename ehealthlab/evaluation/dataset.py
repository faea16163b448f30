"""What an evaluation reads from the store, as numpy arrays. Pure data, no I/O.

`evaluation.fetch` fills it from one snapshot of the store; `evaluation.compute` turns it into
indicators; tests build it by hand. Days are numbered from the period's first day (day 0 is
`period.start`, Europe/Rome), enrolments, patients, devices and municipalities by their
position in the tuples here, so every array is plain integers and floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
#: an integer column kept narrow (int8 to int32) where millions of readings hold it
NarrowArray = npt.NDArray[np.integer[Any]]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

GROUPINGS = ("all", "municipality", "snai_class", "area", "startup", "device_type", "mini_pilot")
POPULATIONS = ("real", "simulated")
INNER_CLASSES = frozenset("DEF")
RETENTION_DAYS = 7
LATE_AFTER_S = 3600.0
ADHERENT_AT_LEAST = 0.8
#: min_seq of an (enrolment, day) whose rows carry no seq (rejected readings without one):
#: above any real seq, so it never lowers a minimum
NO_SEQ = 2**62


@dataclass(frozen=True, slots=True)
class Period:
    """`[start, end)` in whole days of Europe/Rome."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days


@dataclass(frozen=True, slots=True)
class Municipality:
    istat_code: str
    name: str
    population: int
    snai_class: str

    @property
    def area(self) -> str:
        return "inner" if self.snai_class in INNER_CLASSES else "centre"


@dataclass(frozen=True, slots=True)
class MiniPilotScope:
    """A mini-pilot as the evaluation needs it: day numbers relative to the period."""

    key: str
    name: str
    startups: frozenset[str]
    municipalities: frozenset[str]
    first_day: int  # may lie outside [0, period days)
    last_day: int  # included


def _ints(values: object = ()) -> IntArray:
    return np.asarray(values, dtype=np.int64)


def _floats(values: object = ()) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


def _bools(values: object = ()) -> BoolArray:
    return np.asarray(values, dtype=np.bool_)


@dataclass(frozen=True, eq=False)
class Enrolments:
    """The population's enrolments that touch the period, one row each.

    `first_day`/`last_day` are clipped to the period; `plan[e, m]` is the readings of metric
    `m` expected per day under enrolment `e` (0: not planned).
    """

    patient: IntArray
    device: IntArray
    municipality: IntArray
    first_day: IntArray
    last_day: IntArray
    start_date: tuple[date, ...]  # unclipped, to pick the latest enrolment on a day
    plan: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.patient.size)


@dataclass(frozen=True, eq=False)
class Readings:
    """Accepted readings measured in the period, each attributed to an enrolment."""

    enrolment: NarrowArray = field(default_factory=_ints)
    metric: NarrowArray = field(default_factory=_ints)
    day: NarrowArray = field(default_factory=_ints)
    latency_s: FloatArray = field(default_factory=_floats)  # receive - measured, may be < 0
    clock_corrected: BoolArray = field(default_factory=_bools)


@dataclass(frozen=True, eq=False)
class DayCounts:
    """Per (enrolment, day) of the period: what arrived of each device's `seq` numbers
    (accepted, duplicate or rejected, measured that day), and duplicates and rejects."""

    enrolment: IntArray = field(default_factory=_ints)
    day: IntArray = field(default_factory=_ints)
    min_seq: IntArray = field(default_factory=_ints)
    max_seq: IntArray = field(default_factory=_ints)
    distinct_seqs: IntArray = field(default_factory=_ints)
    duplicates: IntArray = field(default_factory=_ints)
    rejected: IntArray = field(default_factory=_ints)


def day_counts_of(
    enrolment: IntArray, day: IntArray, seq: IntArray, kind: IntArray, *, enrolments: int, days: int
) -> DayCounts:
    """DayCounts from every row seen: `kind` 0 accepted, 1 duplicate, 2 rejected; `seq` -1
    when a rejected row had none. A seq seen more than once (a duplicate of an accepted
    reading, a rejected resend) arrives once, on the earliest day it was seen."""
    cell = enrolment.astype(np.int64) * days + day
    cells = enrolments * days
    has_seq = seq >= 0
    if has_seq.all():  # the usual case: no copies of twenty million rows
        with_seq = enrolment, seq, day, cell
    else:
        with_seq = enrolment[has_seq], seq[has_seq], day[has_seq], cell[has_seq]
    distinct = np.bincount(_first_sightings(*with_seq[:3], enrolments, days), minlength=cells)
    lowest = np.full(cells, NO_SEQ, dtype=np.int64)
    highest = np.full(cells, -1, dtype=np.int64)
    np.minimum.at(lowest, with_seq[3], with_seq[1])
    np.maximum.at(highest, with_seq[3], with_seq[1])
    del with_seq
    duplicates = np.bincount(cell[kind == 1], minlength=cells)
    rejected = np.bincount(cell[kind == 2], minlength=cells)
    occupied = np.flatnonzero(np.bincount(cell, minlength=cells))
    return DayCounts(
        enrolment=occupied // days,
        day=occupied % days,
        min_seq=lowest[occupied],
        max_seq=highest[occupied],
        distinct_seqs=distinct[occupied].astype(np.int64),
        duplicates=duplicates[occupied].astype(np.int64),
        rejected=rejected[occupied].astype(np.int64),
    )


def _first_sightings(
    enrolment: IntArray, seq: IntArray, day: IntArray, enrolments: int, days: int
) -> IntArray:
    """The (enrolment, day) cell of each distinct (enrolment, seq), at its earliest day.

    One plain sort of packed integers — enrolment, seq relative to the enrolment's lowest,
    day, from high bits to low — does it: equal (enrolment, seq) sit together, earliest day
    first. A sort of 20 million int64 takes a second; np.unique's stable argsort took six.
    Seq ranges too wide to pack (a device counting past 2^40 within one enrolment) take the
    slower lexicographic sort."""
    if seq.size == 0:
        return np.zeros(0, dtype=np.int64)
    day_bits = max(int(days).bit_length(), 1)
    enrolment_bits = max(int(enrolments).bit_length(), 1)
    lowest = np.full(enrolments, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(lowest, enrolment, seq)
    relative = seq - lowest[enrolment]
    seq_bits = 63 - day_bits - enrolment_bits
    if seq_bits > 0 and int(relative.max()) < (1 << seq_bits):
        # built and sorted in place: three arrays of the rows' size at most
        packed = enrolment.astype(np.int64)
        packed <<= seq_bits + day_bits
        relative <<= day_bits
        packed |= relative
        del relative
        packed |= day
        packed.sort()
        owner = packed >> day_bits
        first = np.empty(packed.size, dtype=bool)
        first[0] = True
        np.not_equal(owner[1:], owner[:-1], out=first[1:])
        del owner
        chosen = packed[first]
        del packed, first
        return (chosen >> (seq_bits + day_bits)) * days + (chosen & ((1 << day_bits) - 1))
    order = np.lexsort((day, seq, enrolment))
    e, q = enrolment[order], seq[order]
    first = np.r_[True, (e[1:] != e[:-1]) | (q[1:] != q[:-1])]
    result: IntArray = e[first].astype(np.int64) * days + day[order][first]
    return result


@dataclass(frozen=True, eq=False)
class Alerts:
    """Alerts whose day of measurement is in the period, attributed like their reading."""

    enrolment: IntArray = field(default_factory=_ints)
    day: IntArray = field(default_factory=_ints)
    ack_hours: FloatArray = field(default_factory=_floats)  # NaN: not acknowledged


@dataclass(frozen=True, eq=False)
class SusResponses:
    """SUS responses answered in the period: their patient (-1: none) and municipality."""

    patient: IntArray = field(default_factory=_ints)
    municipality: IntArray = field(default_factory=_ints)
    day: IntArray = field(default_factory=_ints)
    score: FloatArray = field(default_factory=_floats)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Everything one evaluation of one population over one period reads."""

    period: Period
    population: str
    metrics: tuple[str, ...]
    municipalities: tuple[Municipality, ...]
    #: per device: its start-up's key, its type, its key
    device_startup: tuple[str, ...]
    device_type: tuple[str, ...]
    patients: int
    enrolments: Enrolments
    readings: Readings
    day_counts: DayCounts
    alerts: Alerts
    sus: SusResponses
    mini_pilots: tuple[MiniPilotScope, ...] = ()
    #: start-up key -> name, for labels
    startup_names: dict[str, str] = field(default_factory=dict)
    #: start-up key -> messages refused whole (no readable time), received in the period
    unparsable_messages: dict[str, int] = field(default_factory=dict)
