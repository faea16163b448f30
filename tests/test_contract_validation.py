"""validate_message, reason by reason, boundary by boundary; and the feedback built from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.messages import MAX_PAYLOAD_BYTES, ReasonCode
from ehealthlab.contract.outcome import (
    MessageOutcome,
    Rejection,
    build_feedback,
    conflicting_duplicate,
)
from ehealthlab.contract.validation import validate_message
from ehealthlab.errors import InvalidInputError

CET = timezone(timedelta(hours=1))
RECEIVED_AT = datetime(2026, 11, 25, 8, 1, 8, tzinfo=CET)
AT = "2026-11-25T08:00:30+01:00"
MISSING = object()


def reading(**fields: Any) -> dict[str, Any]:
    """A valid heart-rate reading, with some fields replaced (MISSING removes one)."""
    item = {"seq": 1043, "metric": "heart_rate", "value": 72, "unit": "/min", "at": AT}
    item.update(fields)
    return {k: v for k, v in item.items() if v is not MISSING}


def message(*readings: Any, **fields: Any) -> dict[str, Any]:
    document = {
        "schema": "ehl.readings/1",
        "msg_id": "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11",
        "sent_at": "2026-11-25T08:01:07+01:00",
        "readings": list(readings) or [reading()],
    }
    document.update(fields)
    return {k: v for k, v in document.items() if v is not MISSING}


def validate(
    document: Any,
    device_type: str = "multiparameter_monitor",
    received_at: datetime = RECEIVED_AT,
) -> MessageOutcome:
    payload = document if isinstance(document, bytes) else orjson.dumps(document)
    return validate_message(payload, device_type=device_type, received_at=received_at)


def only_rejection(outcome: MessageOutcome) -> Rejection:
    assert outcome.message_rejection is None
    assert not outcome.accepted
    (rejection,) = outcome.rejected
    return rejection


def iso(moment: datetime) -> str:
    return moment.isoformat()


SPEC_EXAMPLE = b"""{
  "schema": "ehl.readings/1",
  "msg_id": "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11",
  "sent_at": "2026-11-25T08:01:07+01:00",
  "readings": [
    {"seq": 1041, "metric": "bp_systolic",  "value": 142, "unit": "mm[Hg]", "at": "2026-11-25T08:00:30+01:00"},
    {"seq": 1042, "metric": "bp_diastolic", "value": 91,  "unit": "mm[Hg]", "at": "2026-11-25T08:00:30+01:00"},
    {"seq": 1043, "metric": "heart_rate",   "value": 72,  "unit": "/min",   "at": "2026-11-25T08:00:30+01:00"}
  ]
}"""  # noqa: E501 (the contract's example, verbatim)


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


# --- one reading, one reason: (reading, device type, reason, words the detail must contain)
READING_REJECTIONS = [
    # schema_violation: the reading is not the reading shape
    (reading(seq=MISSING), None, ReasonCode.SCHEMA_VIOLATION, "missing field 'seq'"),
    (reading(seq=-1), None, ReasonCode.SCHEMA_VIOLATION, "'seq' -1 is outside"),
    (reading(seq=2**63), None, ReasonCode.SCHEMA_VIOLATION, "'seq' 9223372036854775808"),
    (reading(seq="1043"), None, ReasonCode.SCHEMA_VIOLATION, "'seq' must be an integer"),
    (reading(seq=1043.0), None, ReasonCode.SCHEMA_VIOLATION, "'seq' must be an integer"),
    (reading(seq=True), None, ReasonCode.SCHEMA_VIOLATION, "not a boolean"),
    (reading(metric=MISSING), None, ReasonCode.SCHEMA_VIOLATION, "missing field 'metric'"),
    (reading(metric=7), None, ReasonCode.SCHEMA_VIOLATION, "'metric' must be a string"),
    (reading(value=MISSING), None, ReasonCode.SCHEMA_VIOLATION, "missing field 'value'"),
    (
        reading(value=True),
        None,
        ReasonCode.SCHEMA_VIOLATION,
        "'value' must be a number, not a boolean",
    ),
    (
        reading(value="72"),
        None,
        ReasonCode.SCHEMA_VIOLATION,
        "'value' must be a number, not a string",
    ),
    (reading(value=None), None, ReasonCode.SCHEMA_VIOLATION, "'value' must be a number, not null"),
    (reading(value=[72]), None, ReasonCode.SCHEMA_VIOLATION, "not an array"),
    (reading(unit=None), None, ReasonCode.SCHEMA_VIOLATION, "'unit' must be a string"),
    (reading(at=MISSING), None, ReasonCode.SCHEMA_VIOLATION, "missing field 'at'"),
    (reading(at="2026-11-25T08:00:30"), None, ReasonCode.SCHEMA_VIOLATION, "has no UTC offset"),
    (reading(at="2026-11-25 08:00:30+01:00"), None, ReasonCode.SCHEMA_VIOLATION, "not an RFC 3339"),
    (reading(at="yesterday"), None, ReasonCode.SCHEMA_VIOLATION, "not an RFC 3339"),
    (
        reading(at="2026-02-30T08:00:30+01:00"),
        None,
        ReasonCode.SCHEMA_VIOLATION,
        "not a valid date",
    ),
    (reading(at=1764054030), None, ReasonCode.SCHEMA_VIOLATION, "'at' must be a date-time string"),
    (reading(note="fasting"), None, ReasonCode.SCHEMA_VIOLATION, "unexpected field 'note'"),
    (reading(at=MISSING, time=AT), None, ReasonCode.SCHEMA_VIOLATION, "unexpected field 'time'"),
    ([1043, "heart_rate", 72], None, ReasonCode.SCHEMA_VIOLATION, "must be a JSON object"),
    (None, None, ReasonCode.SCHEMA_VIOLATION, "got null"),
    ("heart_rate 72", None, ReasonCode.SCHEMA_VIOLATION, "got a string"),
    # unknown_metric
    (reading(metric="heartrate"), None, ReasonCode.UNKNOWN_METRIC, "did you mean 'heart_rate'?"),
    (reading(metric="HEART_RATE"), None, ReasonCode.UNKNOWN_METRIC, "unknown metric 'HEART_RATE'"),
    (reading(metric=""), None, ReasonCode.UNKNOWN_METRIC, "known metrics are bp_systolic"),
    # metric_not_for_device_type
    (
        reading(metric="spo2", value=97, unit="%"),
        "blood_pressure_monitor",
        ReasonCode.METRIC_NOT_FOR_DEVICE_TYPE,
        "a blood_pressure_monitor does not measure spo2; it may send bp_systolic, "
        "bp_diastolic, heart_rate",
    ),
    (
        reading(metric="steps", value=10, unit="{steps}"),
        "thermometer",
        ReasonCode.METRIC_NOT_FOR_DEVICE_TYPE,
        "may send body_temperature",
    ),
    # unit_mismatch, with the UCUM spelling when the device meant an accepted unit
    (
        reading(metric="bp_systolic", value=142, unit="mmHg"),
        None,
        ReasonCode.UNIT_MISMATCH,
        "unit 'mmHg' not accepted for bp_systolic: UCUM writes it 'mm[Hg]'; use 'mm[Hg]' or 'kPa'",
    ),
    (reading(unit="bpm"), None, ReasonCode.UNIT_MISMATCH, "UCUM writes it '/min'"),
    (
        reading(metric="body_temperature", value=37, unit="°C"),
        None,
        ReasonCode.UNIT_MISMATCH,
        "UCUM writes it 'Cel'; use 'Cel' or '[degF]'",
    ),
    (
        reading(metric="body_weight", value=150, unit="lbs"),
        None,
        ReasonCode.UNIT_MISMATCH,
        "UCUM writes it '[lb_av]'",
    ),
    (
        reading(metric="blood_glucose", value=5.5, unit="mmol/l"),
        None,
        ReasonCode.UNIT_MISMATCH,
        "UCUM writes it 'mmol/L'",
    ),
    (
        reading(unit="kg"),
        None,
        ReasonCode.UNIT_MISMATCH,
        "unit 'kg' not accepted for heart_rate: use '/min'",
    ),
    (reading(metric="spo2", value=97, unit="mm[Hg]"), None, ReasonCode.UNIT_MISMATCH, "use '%'"),
    # out_of_range, in the canonical unit
    (reading(value=900), None, ReasonCode.OUT_OF_RANGE, "heart_rate 900 /min outside 20\u2013300"),
    (
        reading(metric="bp_systolic", value=45, unit="kPa"),
        None,
        ReasonCode.OUT_OF_RANGE,
        "bp_systolic 45 kPa = 337.528 mm[Hg] outside 40\u2013300 mm[Hg]",
    ),
    (
        reading(metric="body_temperature", value=113.5, unit="[degF]"),
        None,
        ReasonCode.OUT_OF_RANGE,
        "outside 25\u201345 Cel",
    ),
    (reading(metric="steps", value=-1, unit="{steps}"), None, ReasonCode.OUT_OF_RANGE, "steps -1"),
    (reading(value=1.7976931348623157e308), None, ReasonCode.OUT_OF_RANGE, "1.79769e+308"),
    # timestamp_in_future
    (
        reading(at=iso(RECEIVED_AT + timedelta(minutes=5, seconds=1))),
        None,
        ReasonCode.TIMESTAMP_IN_FUTURE,
        "is 301 s after the receive time",
    ),
]


@pytest.mark.parametrize(("item", "device_type", "reason", "words"), READING_REJECTIONS)
def test_a_reading_is_rejected_for_its_reason(
    item: Any, device_type: str | None, reason: ReasonCode, words: str
) -> None:
    outcome = validate(message(item), device_type=device_type or "multiparameter_monitor")
    rejection = only_rejection(outcome)
    assert rejection.reason is reason
    assert words in rejection.detail
    assert rejection.index == 0
    assert rejection.raw == orjson.dumps(item)


def test_every_reason_code_but_the_stores_own_is_covered() -> None:
    covered = {reason for _, _, reason, _ in READING_REJECTIONS}
    covered |= {reason for _, reason, _ in MESSAGE_REJECTIONS}
    assert covered == set(ReasonCode) - {ReasonCode.CONFLICTING_DUPLICATE}


def test_a_rejection_keeps_what_could_be_read_of_the_reading() -> None:
    rejection = only_rejection(validate(message(reading(value=900))))
    assert (rejection.seq, rejection.metric) == (1043, "heart_rate")
    assert rejection.at == datetime(2026, 11, 25, 8, 0, 30, tzinfo=CET)
    broken = only_rejection(validate(message(reading(seq="x", metric=None, at="x"))))
    assert (broken.seq, broken.metric, broken.at) == (None, None, None)


def test_every_problem_of_a_reading_is_named_at_once() -> None:
    detail = only_rejection(
        validate(message(reading(seq=-1, value="72", at="2026-11-25T08:00:30", note=1)))
    ).detail
    for words in (
        "unexpected field 'note'",
        "'seq' -1",
        "'value' must be a number",
        "no UTC offset",
    ):
        assert words in detail


def test_device_text_in_details_is_escaped_and_cut() -> None:
    detail = only_rejection(validate(message(reading(metric="a\x00b" + "x" * 500)))).detail
    assert "\x00" not in detail
    assert "'a\\x00b" in detail
    assert len(detail) < 400


def test_one_bad_reading_does_not_sink_its_neighbours() -> None:
    items = [reading(seq=1), reading(seq=2, value=900), reading(seq=3, value=80)]
    outcome = validate(message(*items))
    assert [r.seq for r in outcome.accepted] == [1, 3]
    assert [r.index for r in outcome.accepted] == [0, 2]
    (rejection,) = outcome.rejected
    assert (rejection.index, rejection.seq, rejection.reason) == (1, 2, ReasonCode.OUT_OF_RANGE)
    assert rejection.raw == orjson.dumps(items[1])


# --- whole-message rejections: (payload or document, reason, words in the detail)
MESSAGE_REJECTIONS = [
    (b"", ReasonCode.MALFORMED_JSON, "empty document"),
    (b"{", ReasonCode.MALFORMED_JSON, "not valid JSON"),
    (b"\xff\xfe{}", ReasonCode.MALFORMED_JSON, "UTF-8"),
    (b'{"readings": [{"value": NaN}]}', ReasonCode.MALFORMED_JSON, "NaN and Infinity are not JSON"),
    (b'{"readings": [{"value": Infinity}]}', ReasonCode.MALFORMED_JSON, "are not JSON numbers"),
    (b'{"readings": [{"value": 1e400}]}', ReasonCode.MALFORMED_JSON, "infinity"),
    (orjson.dumps(message()) + b"garbage", ReasonCode.MALFORMED_JSON, "not valid JSON"),
    (b"[" * 2000, ReasonCode.MALFORMED_JSON, "not valid JSON"),
    (
        [],
        ReasonCode.SCHEMA_VIOLATION,
        "must be a JSON object with schema, msg_id, sent_at, readings; got an array",
    ),
    ("hello", ReasonCode.SCHEMA_VIOLATION, "got a string"),
    (None, ReasonCode.SCHEMA_VIOLATION, "got null"),
    ({}, ReasonCode.SCHEMA_VIOLATION, "missing field 'schema'; missing field 'msg_id'"),
    (message(schema=MISSING), ReasonCode.SCHEMA_VIOLATION, "missing field 'schema'"),
    (
        message(schema="ehl.readings/2"),
        ReasonCode.SCHEMA_VIOLATION,
        "'schema' is 'ehl.readings/2'; this platform accepts 'ehl.readings/1'",
    ),
    (message(msg_id=MISSING), ReasonCode.SCHEMA_VIOLATION, "missing field 'msg_id'"),
    (message(msg_id=""), ReasonCode.SCHEMA_VIOLATION, "'msg_id' has 0 characters"),
    (
        message(msg_id="m" * 65),
        ReasonCode.SCHEMA_VIOLATION,
        "'msg_id' has 65 characters; use 1 to 64",
    ),
    (message(msg_id=42), ReasonCode.SCHEMA_VIOLATION, "'msg_id' must be a string, not a number"),
    (message(msg_id="m\x001"), ReasonCode.SCHEMA_VIOLATION, "contains control characters"),
    (message(sent_at=MISSING), ReasonCode.SCHEMA_VIOLATION, "missing field 'sent_at'"),
    (
        message(sent_at="2026-11-25T08:01:07"),
        ReasonCode.SCHEMA_VIOLATION,
        "'sent_at' '2026-11-25T08:01:07' has no UTC offset",
    ),
    (
        message(sent_at=1764054067),
        ReasonCode.SCHEMA_VIOLATION,
        "'sent_at' must be a date-time string",
    ),
    (message(readings=MISSING), ReasonCode.SCHEMA_VIOLATION, "missing field 'readings'"),
    (message(readings=[]), ReasonCode.SCHEMA_VIOLATION, "'readings' is empty"),
    (
        message(readings=reading()),
        ReasonCode.SCHEMA_VIOLATION,
        "'readings' must be an array, not an object",
    ),
    (
        message(readings=[reading()] * 501),
        ReasonCode.SCHEMA_VIOLATION,
        "'readings' has 501 items; the limit is 500",
    ),
    (
        message(reading=[reading()]),
        ReasonCode.SCHEMA_VIOLATION,
        "unexpected field 'reading' in the message (did you mean 'readings'?)",
    ),
    (message(device_id="bpm-0001"), ReasonCode.SCHEMA_VIOLATION, "unexpected field 'device_id'"),
    (
        b" " * (MAX_PAYLOAD_BYTES + 1),
        ReasonCode.PAYLOAD_TOO_LARGE,
        "65537 bytes; the limit is 65536",
    ),
]


@pytest.mark.parametrize(("document", "reason", "words"), MESSAGE_REJECTIONS)
def test_a_message_is_rejected_whole_for_its_reason(
    document: Any, reason: ReasonCode, words: str
) -> None:
    payload = document if isinstance(document, bytes) else orjson.dumps(document)
    outcome = validate(payload)
    rejection = outcome.message_rejection
    assert rejection is not None
    assert outcome.rejected == (rejection,)
    assert not outcome.accepted
    assert rejection.reason is reason
    assert words in rejection.detail
    assert (rejection.index, rejection.seq, rejection.metric, rejection.at) == (None,) * 4
    assert rejection.raw == payload


def test_a_whole_rejection_keeps_the_msg_id_when_it_could_be_read() -> None:
    assert validate(message(readings=[])).msg_id == "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11"
    assert validate(message(readings=[], msg_id="")).msg_id is None
    assert validate(b"{").msg_id is None


def test_the_size_limit_is_64_kib_inclusive() -> None:
    body = orjson.dumps(message())
    exactly = body + b" " * (MAX_PAYLOAD_BYTES - len(body))
    assert len(exactly) == MAX_PAYLOAD_BYTES
    assert validate(exactly).message_rejection is None
    too_large = validate(exactly + b" ").message_rejection
    assert too_large is not None
    assert too_large.reason is ReasonCode.PAYLOAD_TOO_LARGE


def test_the_size_limit_applies_before_parsing() -> None:
    # 70 KB of garbage is too large, not malformed: the device learns the first thing to fix
    rejection = validate(b"\xff" * 70_000).message_rejection
    assert rejection is not None
    assert rejection.reason is ReasonCode.PAYLOAD_TOO_LARGE


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


# --- feedback
def test_the_contracts_feedback_example() -> None:
    document = orjson.loads(SPEC_EXAMPLE)
    document["readings"][2]["value"] = 900
    outcome = validate(document, device_type="blood_pressure_monitor")
    feedback = build_feedback(outcome, duplicates=0, conflicts=[])
    assert feedback is not None
    assert orjson.loads(feedback.payload()) == {
        "msg_id": "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11",
        "accepted": 2,
        "duplicates": 0,
        "rejected": [
            {
                "index": 2,
                "seq": 1043,
                "reason": "out_of_range",
                "detail": "heart_rate 900 /min outside 20\u2013300",
            }
        ],
    }


def test_no_feedback_when_nothing_was_rejected_even_with_duplicates() -> None:
    outcome = validate(SPEC_EXAMPLE, device_type="blood_pressure_monitor")
    assert build_feedback(outcome) is None
    assert build_feedback(outcome, duplicates=3) is None


def test_feedback_counts_what_the_store_found() -> None:
    items = [reading(seq=1), reading(seq=2, value=900), reading(seq=3), reading(seq=4)]
    outcome = validate(message(*items))
    conflict = conflicting_duplicate(outcome.accepted[2], stored_value=70.0)
    feedback = build_feedback(outcome, duplicates=1, conflicts=[conflict])
    assert feedback is not None
    assert (feedback.accepted, feedback.duplicates) == (1, 1)
    assert [(r.index, r.seq, r.reason) for r in feedback.rejected] == [
        (1, 2, ReasonCode.OUT_OF_RANGE),
        (3, 4, ReasonCode.CONFLICTING_DUPLICATE),
    ]


def test_a_conflicting_duplicate_says_which_value_stays() -> None:
    (accepted,) = validate(
        message(reading(metric="body_weight", value=154, unit="[lb_av]"))
    ).accepted
    rejection = conflicting_duplicate(accepted, stored_value=70.1)
    assert rejection.reason is ReasonCode.CONFLICTING_DUPLICATE
    assert (rejection.index, rejection.seq, rejection.metric, rejection.at) == (
        0,
        1043,
        "body_weight",
        accepted.at,
    )
    assert rejection.detail == (
        "body_weight at 2026-11-25T08:00:30+01:00 is already stored as 70.1 kg; "
        "this message says 69.8532 kg: the first value stays"
    )
    assert orjson.loads(rejection.raw) == {
        "seq": 1043,
        "metric": "body_weight",
        "value": 154,
        "unit": "[lb_av]",
        "at": AT,
    }


def test_feedback_for_a_whole_rejection_has_no_index() -> None:
    feedback = build_feedback(validate(b"{"))
    assert feedback is not None
    assert feedback.msg_id is None
    assert (feedback.accepted, feedback.duplicates) == (0, 0)
    (rejected,) = feedback.rejected
    assert (rejected.index, rejected.seq, rejected.reason) == (
        None,
        None,
        ReasonCode.MALFORMED_JSON,
    )


@pytest.mark.parametrize(("duplicates", "conflicts"), [(4, 0), (2, 2), (-1, 0)])
def test_feedback_refuses_counts_that_cannot_be(duplicates: int, conflicts: int) -> None:
    outcome = validate(message(reading(seq=1), reading(seq=2), reading(seq=3, value=900)))
    found = [conflicting_duplicate(r, 1.0) for r in outcome.accepted[:conflicts]]
    with pytest.raises(ValueError, match="accepted readings"):
        build_feedback(outcome, duplicates=duplicates, conflicts=found)
