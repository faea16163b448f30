"""validate_message, boundary by boundary: the contract's example accepted whole, readings
in other units carried in the canonical one, ranges inclusive after conversion, a device
clock's offset corrected before the future limit; and the caller's own mistakes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from validation_fixtures import (
    CET,
    RECEIVED_AT,
    SPEC_EXAMPLE,
    iso,
    message,
    only_rejection,
    reading,
    validate,
)

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.messages import ReasonCode
from ehealthlab.contract.outcome import build_feedback
from ehealthlab.errors import InvalidInputError


def test_the_contracts_example_is_accepted_whole() -> None:
    outcome = validate(SPEC_EXAMPLE, device_type="blood_pressure_monitor")
    assert outcome.message_rejection is None
    assert not outcome.rejected
    assert outcome.msg_id == "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11"
    assert outcome.sent_at == datetime(2026, 11, 25, 8, 1, 7, tzinfo=CET)
    assert outcome.clock_offset_s == 1.0
    assert not outcome.clock_corrected
    assert [(r.index, r.seq, r.metric, r.value, r.unit) for r in outcome.accepted] == [
        (0, 1041, "bp_systolic", 142.0, "mm[Hg]"),
        (1, 1042, "bp_diastolic", 91.0, "mm[Hg]"),
        (2, 1043, "heart_rate", 72.0, "/min"),
    ]
    first = outcome.accepted[0]
    assert first.at == first.measured_at == datetime(2026, 11, 25, 8, 0, 30, tzinfo=CET)
    assert (first.reported_value, first.reported_unit) == (142, "mm[Hg]")
    assert build_feedback(outcome) is None


# --- units and ranges through the validator
@pytest.mark.parametrize(
    ("metric_code", "value", "unit", "canonical"),
    [
        ("bp_systolic", 16, "kPa", 120.00992),
        ("bp_diastolic", 10.5, "kPa", 78.75651),
        ("body_weight", 70200, "g", 70.2),
        ("body_weight", 154, "[lb_av]", 69.85322498),
        ("body_temperature", 100, "[degF]", 37.77777777777778),
        ("body_temperature", 98.6, "[degF]", 37.0),
        ("blood_glucose", 5.5, "mmol/L", 99.088),
        ("heart_rate", 72, "/min", 72.0),
    ],
)
def test_accepted_readings_carry_the_canonical_and_the_reported_value(
    metric_code: str, value: float, unit: str, canonical: float
) -> None:
    outcome = validate(message(reading(metric=metric_code, value=value, unit=unit)))
    (accepted,) = outcome.accepted
    assert accepted.value == pytest.approx(canonical, rel=1e-12)
    assert accepted.unit == METRICS[metric_code].unit
    assert (accepted.reported_value, accepted.reported_unit) == (value, unit)


def range_edges() -> list[tuple[str, float, bool]]:
    edges = []
    for code, entry in METRICS.items():
        edges += [
            (code, entry.minimum, True),
            (code, entry.maximum, True),
            (code, entry.minimum - 0.001, False),
            (code, entry.maximum + 0.001, False),
        ]
    return edges


@pytest.mark.parametrize(("metric_code", "value", "accepted"), range_edges())
def test_range_bounds_are_inclusive(metric_code: str, value: float, accepted: bool) -> None:
    unit = METRICS[metric_code].unit
    outcome = validate(message(reading(metric=metric_code, value=value, unit=unit)))
    assert bool(outcome.accepted) is accepted
    if not accepted:
        assert only_rejection(outcome).reason is ReasonCode.OUT_OF_RANGE


def test_ranges_apply_after_conversion() -> None:
    # 113 [degF] is exactly 45 Cel, the upper bound; 40 kPa is 300.02 mm[Hg], just above it
    assert validate(message(reading(metric="body_temperature", value=113, unit="[degF]"))).accepted
    high = validate(message(reading(metric="bp_systolic", value=40, unit="kPa")))
    assert only_rejection(high).reason is ReasonCode.OUT_OF_RANGE


# --- clock
@pytest.mark.parametrize(
    ("offset_s", "corrected"),
    [
        (0, False),
        (119, False),
        (120, False),
        (-120, False),
        (121, True),
        (-121, True),
        (3600, True),
    ],
)
def test_a_clock_off_by_more_than_120_s_is_corrected(offset_s: int, corrected: bool) -> None:
    sent_at = RECEIVED_AT - timedelta(seconds=offset_s)
    at = sent_at - timedelta(seconds=30)
    outcome = validate(message(reading(at=iso(at)), sent_at=iso(sent_at)))
    assert outcome.clock_offset_s == offset_s
    assert outcome.clock_corrected is corrected
    (accepted,) = outcome.accepted
    assert accepted.at == at
    assert accepted.clock_corrected is corrected
    assert accepted.measured_at == (at + timedelta(seconds=offset_s) if corrected else at)


def test_the_offset_is_measured_to_the_microsecond() -> None:
    sent_at = RECEIVED_AT - timedelta(seconds=120, microseconds=1)
    outcome = validate(message(sent_at=sent_at.isoformat()))
    assert outcome.clock_offset_s == 120.000001
    assert outcome.clock_corrected


@pytest.mark.parametrize(
    ("ahead", "accepted"),
    [
        (timedelta(minutes=4, seconds=59), True),
        (timedelta(minutes=5), True),
        (timedelta(minutes=5, seconds=1), False),
    ],
)
@pytest.mark.parametrize("offset_s", [0, 600, -600])
def test_the_future_limit_applies_after_correction(
    ahead: timedelta, accepted: bool, offset_s: int
) -> None:
    # the device clock is offset_s behind; its reading is `ahead` of the receive time in
    # true time, so by its own clock it says RECEIVED_AT + ahead - offset
    sent_at = RECEIVED_AT - timedelta(seconds=offset_s)
    at = RECEIVED_AT + ahead - timedelta(seconds=offset_s)
    outcome = validate(message(reading(at=iso(at)), sent_at=iso(sent_at)))
    assert bool(outcome.accepted) is accepted
    if not accepted:
        rejection = only_rejection(outcome)
        assert rejection.reason is ReasonCode.TIMESTAMP_IN_FUTURE
        assert "is 301 s after the receive time" in rejection.detail
        assert ("moved by the device clock's offset" in rejection.detail) is (offset_s != 0)


def test_without_correction_the_same_reading_would_be_in_the_future() -> None:
    sent_at = RECEIVED_AT + timedelta(minutes=10)  # the device clock is 10 minutes fast
    at = sent_at - timedelta(seconds=1)
    outcome = validate(message(reading(at=iso(at)), sent_at=iso(sent_at)))
    (accepted,) = outcome.accepted
    assert accepted.measured_at == RECEIVED_AT - timedelta(seconds=1)
    assert at > RECEIVED_AT + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("at", "sent_at", "reason"),
    [
        (
            "9999-12-31T23:59:59+00:00",
            iso(RECEIVED_AT - timedelta(hours=1)),
            ReasonCode.TIMESTAMP_IN_FUTURE,
        ),
        (
            "0001-01-01T00:00:00+00:00",
            iso(RECEIVED_AT + timedelta(hours=1)),
            ReasonCode.SCHEMA_VIOLATION,
        ),
    ],
)
def test_corrections_beyond_the_calendar_reject_the_reading(
    at: str, sent_at: str, reason: ReasonCode
) -> None:
    rejection = only_rejection(validate(message(reading(at=at), sent_at=sent_at)))
    assert rejection.reason is reason
    assert "falls outside the years 1\u20139999" in rejection.detail


def test_a_sent_at_far_in_the_past_does_not_break_validation() -> None:
    outcome = validate(message(sent_at="0001-01-01T00:00:00+00:00"))
    assert outcome.clock_corrected
    assert only_rejection(outcome).reason is ReasonCode.TIMESTAMP_IN_FUTURE


# --- the caller's mistakes raise; the device's never do
def test_an_unknown_device_type_is_the_callers_mistake() -> None:
    with pytest.raises(InvalidInputError, match="unknown device type 'toaster'"):
        validate(message(), device_type="toaster")


def test_a_naive_receive_time_is_the_callers_mistake() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate(message(), received_at=datetime(2026, 11, 25, 8, 1, 8))


def test_the_receive_time_may_be_in_any_zone() -> None:
    outcome = validate(message(), received_at=RECEIVED_AT.astimezone(UTC))
    assert outcome.clock_offset_s == 1.0
    assert outcome.accepted
