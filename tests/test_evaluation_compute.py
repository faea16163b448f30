"""The indicators computed from hand-built datasets whose every number is worked out below."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehealthlab.evaluation.bootstrap import mean_ci95, seed_for
from ehealthlab.evaluation.compare import difference
from ehealthlab.evaluation.compute import GroupResult, evaluate
from ehealthlab.evaluation.dataset import (
    NO_SEQ,
    Alerts,
    Dataset,
    DayCounts,
    Enrolments,
    MiniPilotScope,
    Municipality,
    Period,
    Readings,
    SusResponses,
    day_counts_of,
)
from ehealthlab.evaluation.registry import INDICATORS, Mean

MUNICIPALITIES = (
    Municipality("001003", "Ala di Stura", 1000, "E"),  # inner
    Municipality("001272", "Torino", 9000, "A"),  # centre
)
METRICS = ("bp_systolic", "body_weight")


def worked_dataset(**changes: object) -> Dataset:
    """Two patients over four days (2026-03-01 .. 03-04).

    p0: cuff d0 (start-up s1) in Ala di Stura (E), days 0-3, 2 systolic readings a day planned;
        readings: day 0 x2, day 1 x1, day 2 none, day 3 x2 -> adherent days 0, 1, 3: 3/4;
        completeness 2+1+0+2 of 8. seqs: day 0 {1,2}, day 1 {3} (+ a duplicate of 3),
        day 3 {5 rejected, 6, 7}: taken 7, arrived 6.
    p1: scale d1 (start-up s2) in Torino (A), days 1-3, one weight a day planned;
        readings day 1 and day 2 -> 2/3; seqs 10, 11: taken 2, arrived 2.
    Latencies (s): p0 10, 20, -5 (counts 0), 4000, 30 (the last corrected); p1 100, 200.
    Alerts: p0 day 1 acknowledged after 2 h, p0 day 3 open, p1 day 2 acknowledged after 30 h.
    SUS: p0 answered 80; a resident of Torino without patient 60.
    """
    fields: dict[str, object] = {
        "period": Period(date(2026, 3, 1), date(2026, 3, 5)),
        "population": "real",
        "metrics": METRICS,
        "municipalities": MUNICIPALITIES,
        "device_startup": ("s1", "s2"),
        "device_type": ("blood_pressure_monitor", "weighing_scale"),
        "patients": 2,
        "enrolments": Enrolments(
            patient=np.array([0, 1]), device=np.array([0, 1]), municipality=np.array([0, 1]),
            first_day=np.array([0, 1]), last_day=np.array([3, 3]),
            start_date=(date(2026, 2, 1), date(2026, 3, 2)),
            plan=np.array([[2, 0], [0, 1]]),
        ),
        "readings": Readings(
            enrolment=np.array([0, 0, 0, 0, 0, 1, 1]),
            metric=np.array([0, 0, 0, 0, 0, 1, 1]),
            day=np.array([0, 0, 1, 3, 3, 1, 2]),
            latency_s=np.array([10.0, 20.0, -5.0, 4000.0, 30.0, 100.0, 200.0]),
            clock_corrected=np.array([False, False, False, False, True, False, False]),
        ),
        "day_counts": DayCounts(
            enrolment=np.array([0, 0, 0, 1, 1]), day=np.array([0, 1, 3, 1, 2]),
            min_seq=np.array([1, 3, 5, 10, 11]), max_seq=np.array([2, 3, 7, 10, 11]),
            distinct_seqs=np.array([2, 1, 3, 1, 1]), duplicates=np.array([0, 1, 0, 0, 0]),
            rejected=np.array([0, 0, 1, 0, 0]),
        ),
        "alerts": Alerts(
            enrolment=np.array([0, 0, 1]), day=np.array([1, 3, 2]),
            ack_hours=np.array([2.0, np.nan, 30.0]),
        ),
        "sus": SusResponses(
            patient=np.array([0, -1]), municipality=np.array([0, 1]), day=np.array([0, 2]),
            score=np.array([80.0, 60.0]),
        ),
        "mini_pilots": (
            MiniPilotScope("mp-1", "Cuffs up the valley", frozenset({"s1"}),
                           frozenset({"001003"}), 1, 2),
        ),
        "startup_names": {"s1": "CuffCo", "s2": "ScaleCo"},
        "unparsable_messages": {"s1": 2},
    }  # fmt: skip
    fields.update(changes)
    return Dataset(**fields)  # type: ignore[arg-type]


def test_every_indicator_of_all_patients_as_worked_out_by_hand():
    values = evaluate(worked_dataset(), "all", seed=1).all.values
    adherence = values.pop("adherence")
    assert isinstance(adherence, Mean)
    assert adherence.value == pytest.approx((3 / 4 + 2 / 3) / 2)
    sus = values.pop("sus_mean")
    assert isinstance(sus, Mean) and sus.value == 70.0
    assert values == {
        "patients_enrolled": 2,
        "patient_days": 7,
        "reach_per_1000": pytest.approx(2 / 10000 * 1000),
        "adherent_patients_share": 0.0,
        "completeness": pytest.approx((5 + 2) / (8 + 3)),
        "retention_share": 1.0,
        "loss_rate": pytest.approx(1 / 9),
        # latencies 0, 10, 20, 30, 100, 200, 4000: numpy's linear percentiles
        "latency_p50_s": 30.0,
        "latency_p95_s": pytest.approx(200 + 0.7 * 3800),
        "late_share": pytest.approx(1 / 7),
        "rejected_share": pytest.approx(1 / 8),
        "duplicate_share": pytest.approx(1 / 8),
        "clock_corrected_share": pytest.approx(1 / 7),
        "unparsable_messages": 2,
        "alerts": 3,
        "alerts_per_patient_week": pytest.approx(3 / (7 / 7)),
        "alert_ack_p50_h": 16.0,
        "alerts_ack_within_24h_share": pytest.approx(1 / 3),
        "visits_avoided": None,  # no economic model given
        "travel_km_avoided": None,
        "travel_hours_avoided": None,
        "co2_kg_avoided": None,
        "cost_per_patient_month": None,
        "break_even_patients": None,
        "sus_responses": 2,
        "provider_engagement": pytest.approx(2 / 3),
    }


def test_inner_areas_and_centres_each_count_their_own_patients_readings_and_answers():
    groups = evaluate(worked_dataset(), "area", seed=1).groups
    assert list(groups) == ["centre", "inner"]
    inner, centre = groups["inner"].values, groups["centre"].values
    assert (inner["patients_enrolled"], centre["patients_enrolled"]) == (1, 1)
    assert inner["loss_rate"] == pytest.approx(1 / 7) and centre["loss_rate"] == 0.0
    assert (inner["alerts"], centre["alerts"]) == (2, 1)
    assert inner["reach_per_1000"] == pytest.approx(1.0)  # 1 of Ala di Stura's 1,000
    assert isinstance(inner["sus_mean"], Mean) and inner["sus_mean"].value == 80.0
    assert isinstance(centre["sus_mean"], Mean) and centre["sus_mean"].value == 60.0
    assert inner["unparsable_messages"] is None  # counted per start-up only


def test_a_mini_pilot_counts_only_its_days_of_its_start_ups_in_its_municipalities():
    pilot = evaluate(worked_dataset(), "mini_pilot", seed=1).groups["mp-1"]
    assert pilot.label == "Cuffs up the valley"
    v = pilot.values
    # p0's days 1 and 2: one reading on day 1 (adherent), none on day 2
    assert (v["patients_enrolled"], v["patient_days"]) == (1, 2)
    assert isinstance(v["adherence"], Mean) and v["adherence"].value == 0.5
    assert v["completeness"] == pytest.approx(1 / 4)
    assert (v["alerts"], v["duplicate_share"], v["loss_rate"]) == (1, 0.5, 0.0)


def test_start_ups_get_their_devices_and_their_unparsable_messages():
    groups = evaluate(worked_dataset(), "startup", seed=1).groups
    seen = {k: (g.label, g.values["patients_enrolled"], g.values["unparsable_messages"])
            for k, g in groups.items()}  # fmt: skip
    assert seen == {"s1": ("CuffCo", 1, 2), "s2": ("ScaleCo", 1, 0)}


def test_a_patient_who_moved_counts_in_the_municipality_of_their_last_enrolled_day():
    data = worked_dataset(
        patients=1,
        enrolments=Enrolments(
            patient=np.array([0, 0]), device=np.array([0, 1]), municipality=np.array([0, 1]),
            first_day=np.array([0, 2]), last_day=np.array([1, 3]),
            start_date=(date(2026, 2, 1), date(2026, 3, 3)), plan=np.array([[2, 0], [0, 1]]),
        ),
        readings=Readings(), day_counts=DayCounts(), alerts=Alerts(), sus=SusResponses(),
    )  # fmt: skip
    groups = evaluate(data, "municipality", seed=1).groups
    assert list(groups) == ["001272"]  # Torino, where the last enrolled day was
    assert groups["001272"].values["patient_days"] == 4  # the whole stay, both places
    assert groups["001272"].values["reach_per_1000"] == pytest.approx(1 / 9000 * 1000)


def test_two_enrolments_on_one_day_plan_the_union_of_their_metrics():
    data = worked_dataset(
        patients=1,
        enrolments=Enrolments(
            patient=np.array([0, 0]), device=np.array([0, 1]), municipality=np.array([0, 0]),
            first_day=np.array([0, 0]), last_day=np.array([0, 0]),
            start_date=(date(2026, 3, 1), date(2026, 3, 1)), plan=np.array([[2, 0], [1, 1]]),
        ),
        readings=Readings(enrolment=np.array([0]), metric=np.array([0]), day=np.array([0]),
                          latency_s=np.array([1.0]), clock_corrected=np.array([False])),
        day_counts=DayCounts(), alerts=Alerts(), sus=SusResponses(),
    )  # fmt: skip
    values = evaluate(data, "all", seed=1).all.values
    assert values["patient_days"] == 1
    assert isinstance(values["adherence"], Mean) and values["adherence"].value == 0.0  # no weight
    assert values["completeness"] == pytest.approx(1 / 3)  # 1 of 2 systolic + 0 of 1 weight


def test_empty_denominators_are_null_never_zero():
    empty = worked_dataset(
        patients=0,
        enrolments=Enrolments(np.zeros(0, np.int64), np.zeros(0, np.int64),
                              np.zeros(0, np.int64), np.zeros(0, np.int64),
                              np.zeros(0, np.int64), (), np.zeros((0, 2), np.int64)),
        readings=Readings(), day_counts=DayCounts(), alerts=Alerts(), sus=SusResponses(),
        unparsable_messages={},
    )  # fmt: skip
    values = evaluate(empty, "all", seed=1).all.values
    assert values["patients_enrolled"] == 0 and values["alerts"] == 0
    for ratio in ("reach_per_1000", "adherence", "completeness", "loss_rate", "latency_p50_s",
                  "duplicate_share", "alerts_per_patient_week", "sus_mean",
                  "provider_engagement"):  # fmt: skip
        assert values[ratio] is None, ratio
    assert set(values) == {i.id for i in INDICATORS}


def test_the_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    first = evaluate(worked_dataset(), "all", seed=7).all.values["adherence"]
    again = evaluate(worked_dataset(), "all", seed=7).all.values["adherence"]
    other = evaluate(worked_dataset(), "all", seed=8).all.values["adherence"]
    assert isinstance(first, Mean) and isinstance(other, Mean)
    assert first == again and first.ci95 is not None
    assert first.ci95[0] <= first.value <= first.ci95[1]
    assert seed_for(7, "all", "all", "adherence") != seed_for(8, "all", "all", "adherence")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=60), st.integers(0, 2**32))
def test_a_bootstrap_interval_lies_within_the_sample_and_is_reproducible(values, seed):
    sample = np.array(values)
    interval = mean_ci95(sample, seed, resamples=200)
    assert interval is not None
    low, high = interval
    assert sample.min() - 1e-12 <= low <= high <= sample.max() + 1e-12
    assert mean_ci95(sample, seed, resamples=200) == interval


def test_inner_areas_against_centres_each_difference_with_its_interval():
    groups = evaluate(worked_dataset(), "area", seed=1).groups
    inner, centre = groups["inner"], groups["centre"]
    loss = difference(inner, centre, "loss_rate", seed=1)
    assert loss.difference == pytest.approx(1 / 7 - 0.0)
    # one patient a side: every resample is that patient, so the interval is the point
    assert loss.ci95 == pytest.approx((1 / 7, 1 / 7))
    adherence = difference(inner, centre, "adherence", seed=1)
    assert adherence.difference == pytest.approx(3 / 4 - 2 / 3)
    assert adherence.ci95 == pytest.approx((3 / 4 - 2 / 3, 3 / 4 - 2 / 3))
    latency = difference(inner, centre, "latency_p50_s", seed=1)
    assert latency.difference is not None and latency.ci95 is None  # a percentile: no interval


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), min_size=2, max_size=30))
def test_a_ratio_difference_interval_brackets_the_observed_difference_of_a_group_with_itself(
    parts,
):
    """Against itself, a group's difference is 0 and its interval straddles 0."""
    numerator = np.array([min(a, b) for a, b in parts], dtype=float)
    denominator = np.array([b for _, b in parts], dtype=float)
    group = GroupResult("g", "g", len(parts), {"loss_rate": numerator.sum() / denominator.sum()},
                        {"lost": numerator, "taken": denominator}, {})  # fmt: skip
    result = difference(group, group, "loss_rate", seed=3)
    assert result.difference == 0.0
    assert result.ci95 is not None and result.ci95[0] <= 0.0 <= result.ci95[1]


def test_day_counts_count_each_seq_once_whoever_saw_it():
    """Enrolment 0: seqs 1, 2 accepted on day 0, 2 again as a duplicate, 4 rejected on day 1
    and a rejected reading without seq on day 1; enrolment 1: seq 7 on day 1."""
    counts = day_counts_of(
        enrolment=np.array([0, 0, 0, 0, 0, 1]),
        day=np.array([0, 0, 0, 1, 1, 1]),
        seq=np.array([1, 2, 2, 4, -1, 7]),
        kind=np.array([0, 0, 1, 2, 2, 0]),
        enrolments=2,
        days=2,
    )
    columns = ("enrolment", "day", "min_seq", "max_seq", "distinct_seqs", "duplicates", "rejected")
    table = list(zip(*(getattr(counts, c).tolist() for c in columns), strict=True))
    assert table == [(0, 0, 1, 2, 2, 1, 0), (0, 1, 4, 4, 1, 0, 2), (1, 1, 7, 7, 1, 0, 0)]


def test_a_patient_in_two_mini_pilots_counts_in_both_with_the_days_of_each():
    """p0's cuff (start-up s1, Ala di Stura): mini-pilot A takes days 0-1, B days 1-3."""
    pilots = (
        MiniPilotScope("a", "A", frozenset({"s1"}), frozenset({"001003"}), 0, 1),
        MiniPilotScope("b", "B", frozenset({"s1", "s2"}), frozenset({"001003"}), 1, 3),
    )
    groups = evaluate(worked_dataset(mini_pilots=pilots), "mini_pilot", seed=1).groups
    a, b = groups["a"].values, groups["b"].values
    assert (a["patients_enrolled"], a["patient_days"]) == (1, 2)
    assert (b["patients_enrolled"], b["patient_days"]) == (1, 3)  # p1 is in Torino: not in B
    # days 0-1: readings 2 + 1 of 2 + 2 planned; days 1-3: 1 + 0 + 2 of 6
    assert a["completeness"] == pytest.approx(3 / 4) and b["completeness"] == pytest.approx(3 / 6)
    assert (a["alerts"], b["alerts"]) == (1, 2)  # day 1 is in both
    # seqs: A sees 1-3 (none lost); B sees 3 and 5-7: taken 7 - 3 + 1 = 5, arrived 4
    assert a["loss_rate"] == 0.0 and b["loss_rate"] == pytest.approx(1 / 5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(-1, 6),
                  st.integers(0, 2), st.booleans()),
        max_size=40,
    )
)  # fmt: skip
def test_day_counts_agree_with_counting_by_hand(rows):
    """Against a plain Python count; the last flag pushes a seq 2^58 above the
    enrolment's lowest, which takes the unpacked path."""
    enrolment = np.array([r[0] for r in rows], dtype=np.int64)
    day = np.array([r[1] for r in rows], dtype=np.int64)
    seq = np.array([r[2] + (2**58 if r[4] and r[2] >= 0 else 0) for r in rows], dtype=np.int64)
    kind = np.array([r[3] for r in rows], dtype=np.int64)
    counts = day_counts_of(enrolment, day, seq, kind, enrolments=4, days=5)
    earliest: dict[tuple[int, int], int] = {}
    for e, d, q in zip(enrolment.tolist(), day.tolist(), seq.tolist(), strict=True):
        if q >= 0:
            earliest[(e, q)] = min(d, earliest.get((e, q), d))
    expected = {}
    for e, d in {(int(e), int(d)) for e, d in zip(enrolment, day, strict=True)}:
        table = zip(enrolment.tolist(), day.tolist(), seq.tolist(), kind.tolist(), strict=True)
        here = [(q, k) for ee, dd, q, k in table if (ee, dd) == (e, d)]
        seqs = [q for q, _ in here if q >= 0]
        expected[(e, d)] = (
            min(seqs, default=NO_SEQ), max(seqs, default=-1),
            sum(1 for (ee, _), dd in earliest.items() if (ee, dd) == (e, d)),
            sum(k == 1 for _, k in here), sum(k == 2 for _, k in here),
        )  # fmt: skip
    got = {
        (e, d): (lo, hi, n, dup, rej)
        for e, d, lo, hi, n, dup, rej in zip(
            counts.enrolment.tolist(), counts.day.tolist(), counts.min_seq.tolist(),
            counts.max_seq.tolist(), counts.distinct_seqs.tolist(), counts.duplicates.tolist(),
            counts.rejected.tolist(), strict=True,
        )
    }  # fmt: skip
    assert got == expected


def test_the_interval_of_all_patients_is_the_same_whatever_the_grouping():
    intervals = {
        grouping: evaluate(worked_dataset(), grouping, seed=5).all.values["adherence"]
        for grouping in ("all", "area", "municipality", "mini_pilot")
    }
    assert len(set(intervals.values())) == 1
