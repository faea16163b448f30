"""What a batch of readings sends back for the alert rules (`AlertScope`): exactly the
attributed readings its rules may act on, the same in SQL as in Python, and how many it
inserted, whatever it skipped."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_fixtures import T0, enrol, reading, register_device

from ehealthlab.ingest.alerting import alert_scope
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules, ThresholdRule, WeightGainRule
from ehealthlab.store.readings import EVERY_ATTRIBUTED, ReadingRow, ReadingWriter

# --- the scope of a set of rules, in Python -------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "covered"),
    [
        ("bp_systolic", 179.9, False),
        ("bp_systolic", 180, True),  # bp_systolic_high: >= 180
        ("bp_systolic", 90, True),  # bp_systolic_low: <= 90
        ("bp_systolic", 90.1, False),
        ("bp_diastolic", 110, True),
        ("heart_rate", 40, True),
        ("heart_rate", 80, False),
        ("spo2", 90, True),
        ("spo2", 97, False),
        ("body_temperature", 38.0, True),
        ("body_temperature", 37.9, False),
        ("blood_glucose", 70, True),
        ("blood_glucose", 150, False),
        ("blood_glucose", 300, True),
        ("body_weight", 70.0, True),  # every weight: the weight-gain rule compares them
        ("steps", 1e9, False),  # no rule
    ],
)
def test_the_default_rules_scope(metric: str, value: float, covered: bool) -> None:
    assert alert_scope(DEFAULT_RULES).covers(metric, value) is covered


_METRICS = ("bp_systolic", "heart_rate", "spo2", "body_weight")
_thresholds = st.lists(
    st.builds(
        ThresholdRule,
        rule_id=st.uuids().map(str),
        metric=st.sampled_from(_METRICS),
        op=st.sampled_from([">=", "<="]),
        threshold=st.floats(-1e6, 1e6) | st.integers(-1000, 1000),
    ),
    max_size=6,
)
_values = st.floats(-2e6, 2e6) | st.integers(-2000, 2000)


@given(_thresholds, st.sampled_from(_METRICS), _values)
def test_a_scope_holds_exactly_the_readings_its_rules_breach_and_every_weight(
    thresholds: list[ThresholdRule], metric: str, value: float
) -> None:
    rules = AlertRules(tuple(thresholds), WeightGainRule())
    breached = any(r.metric == metric and r.breached_by(value) for r in thresholds)
    assert alert_scope(rules).covers(metric, value) is (breached or metric == "body_weight")


def test_a_rule_breached_by_nothing_does_not_narrow_the_scope_of_the_others() -> None:
    never = ThresholdRule("never", "bp_systolic", ">=", float("nan"))
    rules = AlertRules((*DEFAULT_RULES.thresholds, never), WeightGainRule())
    assert alert_scope(rules).covers("bp_systolic", 200.0)
    assert not alert_scope(rules).covers("bp_systolic", 150.0)


# --- what a batch sends back, from the store ------------------------------------------------


def _around_the_thresholds(device: str) -> list[ReadingRow]:
    values = [
        ("bp_systolic", 179.0), ("bp_systolic", 180.0), ("bp_systolic", 85.0),
        ("bp_systolic", 120.0), ("heart_rate", 39.0), ("heart_rate", 60.0),
        ("heart_rate", 121.0), ("spo2", 97.0), ("spo2", 88.0), ("body_weight", 70.5),
        ("body_temperature", 38.5), ("steps", 12000.0),
    ]  # fmt: skip
    return [
        reading(device, metric, at=T0 + timedelta(minutes=i), value=value, seq=i)
        for i, (metric, value) in enumerate(values)
    ]


def test_a_batch_sends_back_the_attributed_readings_in_scope_and_counts_what_it_skipped(
    store_url: str,
) -> None:
    scope = alert_scope(DEFAULT_RULES)
    with psycopg.connect(store_url, autocommit=True) as conn:
        register_device(conn, "cuff-0001")
        register_device(conn, "cuff-0002")  # not enrolled: nothing of it is attributed
        patient, _ = enrol(conn, "cuff-0001", date(2026, 3, 1))
        batch = _around_the_thresholds("cuff-0001") + _around_the_thresholds("cuff-0002")
        writer = ReadingWriter(conn)

        first = writer.write(batch, scope)
        assert first.inserted == len(batch)
        assert first.duplicates == [] and first.conflicts == []
        expected = {
            (r.metric, r.value)
            for r in batch
            if r.device_id == "cuff-0001" and scope.covers(r.metric, r.value)
        }
        assert len(expected) == 7  # of the 12 above, 7 are at a threshold or weights
        assert {(r.metric, r.value) for r in first.attributed} == expected
        assert {(r.device_id, r.patient_id) for r in first.attributed} == {("cuff-0001", patient)}

        # sent again with one new reading: one inserted, the rest duplicates, and only the new
        # reading sent back
        later = reading("cuff-0001", "bp_systolic", at=T0 + timedelta(hours=1), value=200, seq=99)
        second = writer.write([*batch, later], scope)
        assert second.inserted == 1
        assert sorted(second.duplicates) == list(range(len(batch)))
        assert [(r.metric, r.value) for r in second.attributed] == [("bp_systolic", 200.0)]

        # nothing new at all: none inserted, every reading a duplicate, nothing sent back
        third = writer.write(batch, scope)
        assert third.inserted == 0
        assert sorted(third.duplicates) == list(range(len(batch)))
        assert third.attributed == []


def test_unless_told_a_batch_sends_back_every_attributed_reading(store_url: str) -> None:
    with psycopg.connect(store_url, autocommit=True) as conn:
        register_device(conn, "cuff-0001")
        register_device(conn, "cuff-0002")
        enrol(conn, "cuff-0001", date(2026, 3, 1))
        batch = _around_the_thresholds("cuff-0001") + _around_the_thresholds("cuff-0002")
        result = ReadingWriter(conn).write(batch)
        assert result.inserted == len(batch)
        assert sorted((r.metric, r.value) for r in result.attributed) == sorted(
            (r.metric, r.value) for r in batch if r.device_id == "cuff-0001"
        )
        assert EVERY_ATTRIBUTED.covers("steps", 0.0)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(thresholds=_thresholds)
def test_the_store_sends_back_what_the_scope_covers_for_any_rules(
    store_url: str, thresholds: list[ThresholdRule]
) -> None:
    """The scope's SQL and `covers` agree on readings of random values, for random rules (each
    example in a transaction rolled back)."""
    rules = AlertRules(tuple(thresholds), WeightGainRule())
    scope = alert_scope(rules)
    values = [-2000.0, -1.5, 0.0, 1.0, 89.0, 90.0, 180.0, 1e5, -1e6, 1e6]
    values += [t.threshold for t in thresholds]
    batch = [
        reading("cuff-0001", metric, at=T0 + timedelta(minutes=i), value=float(value), seq=i)
        for i, (metric, value) in enumerate((m, v) for m in _METRICS for v in values)
    ]
    with psycopg.connect(store_url, autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM devices").fetchone() == (0,):
            register_device(conn, "cuff-0001")
            enrol(conn, "cuff-0001", date(2026, 3, 1))
        writer = ReadingWriter(conn)
        writer.prepare(batch)
        with conn.transaction(force_rollback=True):
            result = writer.write_in_transaction(batch, scope)
    assert result.inserted == len(batch)
    assert sorted((r.metric, r.value) for r in result.attributed) == sorted(
        (r.metric, r.value) for r in batch if scope.covers(r.metric, r.value)
    )
