"""The per-patient reading counts, sliced by patients to bound memory, against a plain
Python count of the same definitions, whatever the size of the slices."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ehealthlab.evaluation.dataset import LATE_AFTER_S, Readings
from ehealthlab.evaluation.reading_counts import ByEnrolment, count_readings

DAYS, METRICS = 5, 3

groups = st.integers(1, 4).flatmap(
    lambda enrolments: st.tuples(
        # per enrolment: its patient (0..2), its plan per metric, its selected days
        st.lists(st.integers(0, 2), min_size=enrolments, max_size=enrolments),
        st.lists(st.lists(st.integers(0, 2), min_size=METRICS, max_size=METRICS),
                 min_size=enrolments, max_size=enrolments),
        st.lists(st.lists(st.booleans(), min_size=DAYS, max_size=DAYS),
                 min_size=enrolments, max_size=enrolments),
        # readings: (enrolment, day, metric, latency, clock-corrected)
        st.lists(st.tuples(st.integers(0, enrolments - 1), st.integers(0, DAYS - 1),
                           st.integers(0, METRICS - 1),
                           st.sampled_from([-5.0, 0.0, 30.0, LATE_AFTER_S, LATE_AFTER_S + 1]),
                           st.booleans()), max_size=40),
        st.integers(0, DAYS - 1),
        st.sampled_from([1, 7, 30, 1 << 21]),
    )
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(groups)
def test_sliced_counts_equal_a_plain_count_by_hand(case):
    owner, plans, chosen, items, since_day, chunk_cells = case
    enrolments = len(owner)
    patients, local_patient = np.unique(owner, return_inverse=True)
    selected = np.array(chosen, dtype=bool)
    enrolled = np.zeros((patients.size, DAYS), dtype=bool)
    np.logical_or.at(enrolled, local_patient, selected)
    readings = Readings(
        enrolment=np.array([r[0] for r in items], dtype=np.int32),
        metric=np.array([r[2] for r in items], dtype=np.int8),
        day=np.array([r[1] for r in items], dtype=np.int16),
        latency_s=np.array([r[3] for r in items], dtype=np.float32),
        clock_corrected=np.array([r[4] for r in items], dtype=bool),
    )
    got = count_readings(
        readings, ByEnrolment.of(readings.enrolment, enrolments),
        plan=np.array(plans, dtype=np.int64), rows=np.arange(enrolments), selected=selected,
        local_patient=local_patient, enrolled=enrolled, since_day=since_day,
        chunk_cells=chunk_cells,
    )  # fmt: skip

    # by hand: a patient-day expects, per metric, the largest count of its selected rows
    wanted: dict[tuple[int, int, int], int] = defaultdict(int)
    for e, p in enumerate(local_patient.tolist()):
        for d in range(DAYS):
            for m in range(METRICS):
                if chosen[e][d]:
                    wanted[p, d, m] = max(wanted[p, d, m], plans[e][m])
    counts: dict[tuple[int, int, int], int] = defaultdict(int)
    kept = [r for r in items if chosen[r[0]][r[1]]]
    for e, d, m, _, _ in kept:
        counts[local_patient[e], d, m] += 1
    for p in range(patients.size):
        adherent = sum(
            all(counts[p, d, m] > 0 for m in range(METRICS) if wanted[p, d, m] > 0)
            for d in range(DAYS) if enrolled[p, d]
        )  # fmt: skip
        mine = [r for r in kept if local_patient[r[0]] == p]
        assert got.adherent_days[p] == adherent
        assert got.completeness_met[p] == sum(
            min(counts[p, d, m], wanted[p, d, m]) for d in range(DAYS) for m in range(METRICS)
        )
        assert got.completeness_expected[p] == sum(
            wanted[p, d, m] for d in range(DAYS) for m in range(METRICS)
        )
        assert got.accepted[p] == len(mine)
        assert got.late[p] == sum(max(r[3], 0.0) > LATE_AFTER_S for r in mine)
        assert got.clock_corrected[p] == sum(r[4] for r in mine)
        assert got.measured_since[p] == any(r[1] >= since_day for r in mine)
    assert sorted(got.latency.tolist()) == sorted(max(r[3], 0.0) for r in kept)
