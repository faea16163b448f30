"""What a group's accepted readings say per patient: adherent days, completeness, latency,
late and clock-corrected readings. Pure numpy.

The count behind adherence and completeness is a patient x day x metric matrix. Over a year
of 10,000 patients it would hold 33 million cells per metric, so it is built for a slice of
the group's patients at a time (about CHUNK_CELLS cells) and only for the metrics the
group's care plans name: memory stays bounded by the slice, not by the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ehealthlab.evaluation.dataset import (
    LATE_AFTER_S,
    BoolArray,
    FloatArray,
    IntArray,
    NarrowArray,
    Readings,
)

#: cells of one slice's count matrix (int64): 16 MiB, whatever the group's size
CHUNK_CELLS = 1 << 21


@dataclass(frozen=True, eq=False)
class ByEnrolment:
    """An array family sorted by enrolment, with each enrolment's slice."""

    order: IntArray
    offsets: IntArray  # items of enrolment e: order[offsets[e]:offsets[e+1]]

    @classmethod
    def of(cls, enrolment: NarrowArray | IntArray, enrolments: int) -> ByEnrolment:
        order = np.argsort(enrolment, kind="stable")
        counts = np.bincount(enrolment, minlength=enrolments)
        return cls(order, np.concatenate(([0], np.cumsum(counts))))

    def take(self, rows: IntArray) -> tuple[IntArray, IntArray]:
        """(positions in the original arrays, local enrolment number) of `rows`' items."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        local = np.repeat(np.arange(rows.size), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return self.order[np.repeat(starts, lengths) + within], local


@dataclass(frozen=True, eq=False)
class PatientReadings:
    """Per patient of the group (local numbering), from the readings of the selected days."""

    adherent_days: IntArray  # enrolled days on which every planned metric has a reading
    completeness_met: FloatArray  # sum over days and metrics of min(readings, expected)
    completeness_expected: FloatArray  # sum over days and metrics of the expected readings
    accepted: FloatArray
    late: FloatArray
    clock_corrected: FloatArray
    measured_since: BoolArray  # has a reading on or after the day asked for
    latency: FloatArray  # every reading's latency in seconds, negative ones counted as 0


def count_readings(
    readings: Readings,
    by_enrolment: ByEnrolment,
    *,
    plan: IntArray,
    rows: IntArray,
    selected: BoolArray,
    local_patient: IntArray,
    enrolled: BoolArray,
    since_day: int,
    chunk_cells: int = CHUNK_CELLS,
) -> PatientReadings:
    """`plan`, `selected` and `local_patient` are per row (enrolment) of the group;
    `enrolled` is the patients' enrolled-day matrix. A patient-day's plan is the union of
    its enrolments' plans, a metric planned by two expecting the larger count."""
    patients, days = enrolled.shape
    planned = np.flatnonzero(plan.any(axis=0))
    column = np.full(plan.shape[1], -1, dtype=np.int64)
    column[planned] = np.arange(planned.size)
    width = max(planned.size, 1)
    step = max(1, chunk_cells // (days * width))
    order = np.argsort(local_patient, kind="stable")
    sorted_patient = local_patient[order]

    adherent_days = np.zeros(patients, dtype=np.int64)
    met, expected = np.zeros(patients), np.zeros(patients)
    accepted, late, corrected = np.zeros(patients), np.zeros(patients), np.zeros(patients)
    since = np.zeros(patients, dtype=bool)
    latencies: list[FloatArray] = []
    for first in range(0, patients, step):
        stop = min(first + step, patients)
        low, high = np.searchsorted(sorted_patient, [first, stop])
        chunk = order[low:high]
        patient, chosen_days = local_patient[chunk] - first, selected[chunk]
        size = stop - first
        wanted = np.zeros((size, days, width), dtype=np.int16)
        if planned.size:
            row_plan = plan[chunk][:, planned].astype(np.int16)
            np.maximum.at(wanted, patient, chosen_days[:, :, None] * row_plan[:, None, :])

        positions, local_row = by_enrolment.take(rows[chunk])
        day = readings.day[positions]
        kept = chosen_days[local_row, day]
        positions, day = positions[kept], day[kept].astype(np.int64)
        patient_of = patient[local_row[kept]]
        del local_row, kept
        col = column[readings.metric[positions]]
        counted = col >= 0
        cell = (patient_of[counted] * days + day[counted]) * width + col[counted]
        counts = np.bincount(cell, minlength=size * days * width).reshape(size, days, width)
        del cell, counted, col
        missing = np.any((wanted > 0) & (counts == 0), axis=2)
        adherent_days[first:stop] = (enrolled[first:stop] & ~missing).sum(axis=1)
        met[first:stop] = np.minimum(counts, wanted).sum(axis=(1, 2))
        expected[first:stop] = wanted.sum(axis=(1, 2), dtype=np.int64)
        del counts, wanted, missing

        latency = np.maximum(readings.latency_s[positions], 0.0)
        accepted[first:stop] = np.bincount(patient_of, minlength=size)
        late[first:stop] = np.bincount(patient_of, latency > LATE_AFTER_S, minlength=size)
        corrected[first:stop] = np.bincount(
            patient_of, readings.clock_corrected[positions], minlength=size
        )
        since[first:stop] = np.bincount(patient_of[day >= since_day], minlength=size) > 0
        latencies.append(latency)
    latency_all = np.concatenate(latencies) if latencies else np.zeros(0)
    return PatientReadings(
        adherent_days, met, expected, accepted, late, corrected, since, latency_all
    )
