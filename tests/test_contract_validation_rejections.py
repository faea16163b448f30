"""validate_message, reason by reason: each rejection of one reading and of a whole message,
the words of its detail, what it keeps of what could be read, and the 64 KiB size limit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from validation_fixtures import (
    AT,
    CET,
    MISSING,
    RECEIVED_AT,
    iso,
    message,
    only_rejection,
    reading,
    validate,
)

from ehealthlab.contract.messages import MAX_PAYLOAD_BYTES, ReasonCode

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
