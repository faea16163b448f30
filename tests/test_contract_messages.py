"""The message models, the reason codes and the one timestamp parser they share with the
validator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from ehealthlab.contract.messages import (
    FeedbackMessage,
    FeedbackRejection,
    ReadingItem,
    ReadingsMessage,
    ReasonCode,
    StatusMessage,
)
from ehealthlab.contract.timestamps import TimestampError, format_timestamp, parse_timestamp

CET = timezone(timedelta(hours=1))
AT = datetime(2026, 11, 25, 8, 0, 30, tzinfo=CET)


def test_reason_codes_are_exactly_the_contracts() -> None:
    assert [code.value for code in ReasonCode] == [
        "malformed_json",
        "schema_violation",
        "payload_too_large",
        "unknown_metric",
        "metric_not_for_device_type",
        "unit_mismatch",
        "out_of_range",
        "timestamp_in_future",
        "conflicting_duplicate",
    ]
    assert ReasonCode("out_of_range") == "out_of_range"


VALID_TIMESTAMPS = [
    ("2026-11-25T08:00:30+01:00", AT),
    ("2026-11-25T07:00:30Z", AT),
    ("2026-11-25T07:00:30z", AT),
    ("2026-11-25t08:00:30+01:00", AT),
    ("2026-11-25T07:00:30+00:00", AT),
    ("2026-11-25T07:00:30-00:00", AT),
    ("2026-11-25T02:30:30-04:30", AT),
    ("2026-11-25T08:00:30.250+01:00", AT + timedelta(milliseconds=250)),
    ("2026-11-25T08:00:30.123456789+01:00", AT + timedelta(microseconds=123456)),
    ("2026-11-26T06:59:30+23:59", AT),
]

INVALID_TIMESTAMPS = [
    ("2026-11-25T08:00:30", "no UTC offset"),
    ("2026-11-25T08:00:30.5", "no UTC offset"),
    ("2026-11-25 08:00:30+01:00", "not an RFC 3339"),
    ("2026-11-25T08:00+01:00", "not an RFC 3339"),
    ("20261125T080030+0100", "not an RFC 3339"),
    ("2026-W48-3T08:00:30+01:00", "not an RFC 3339"),
    ("2026-11-25T08:00:30+0100", "not an RFC 3339"),
    ("2026-11-25T08:00:30+01", "not an RFC 3339"),
    ("2026-11-25T08:00:30+24:00", "not an RFC 3339"),
    ("2026-11-25T08:00:30+01:60", "not an RFC 3339"),
    ("2026-11-25T08:00:30 +01:00", "not an RFC 3339"),
    ("2026-11-25", "not an RFC 3339"),
    ("", "not an RFC 3339"),
    ("\uff12\uff10\uff12\uff16-11-25T08:00:30+01:00", "not an RFC 3339"),
    ("2026-11-25T08:00:3\u0660+01:00", "not an RFC 3339"),
    ("2026-11-25T08:00:60+01:00", "not a valid date and time"),
    ("2026-11-25T24:00:00+01:00", "not a valid date and time"),
    ("2026-02-29T08:00:30+01:00", "not a valid date and time"),
    ("0000-01-01T00:00:00+00:00", "not a valid date and time"),
]


@pytest.mark.parametrize(("text", "expected"), VALID_TIMESTAMPS)
def test_rfc3339_timestamps_with_an_offset_parse(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() is not None


@pytest.mark.parametrize(("text", "words"), INVALID_TIMESTAMPS)
def test_other_timestamps_are_refused_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(TimestampError, match=words):
        parse_timestamp(text)


def test_a_timestamp_is_written_with_its_offset() -> None:
    assert format_timestamp(AT) == "2026-11-25T08:00:30+01:00"
    assert format_timestamp(AT.astimezone(UTC)) == "2026-11-25T07:00:30+00:00"


SPEC_EXAMPLE: dict[str, Any] = {
    "schema": "ehl.readings/1",
    "msg_id": "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11",
    "sent_at": "2026-11-25T08:01:07+01:00",
    "readings": [
        {
            "seq": 1041,
            "metric": "bp_systolic",
            "value": 142,
            "unit": "mm[Hg]",
            "at": "2026-11-25T08:00:30+01:00",
        },
        {
            "seq": 1042,
            "metric": "bp_diastolic",
            "value": 91,
            "unit": "mm[Hg]",
            "at": "2026-11-25T08:00:30+01:00",
        },
        {
            "seq": 1043,
            "metric": "heart_rate",
            "value": 72,
            "unit": "/min",
            "at": "2026-11-25T08:00:30+01:00",
        },
    ],
}


def test_the_contracts_example_is_a_readings_message() -> None:
    message = ReadingsMessage.model_validate_json(orjson.dumps(SPEC_EXAMPLE))
    assert message.msg_id == SPEC_EXAMPLE["msg_id"]
    assert message.readings[0] == ReadingItem(
        seq=1041, metric="bp_systolic", value=142, unit="mm[Hg]", at=AT
    )
    # what a simulator publishes reads back as the same message
    assert ReadingsMessage.model_validate_json(message.payload()) == message
    assert orjson.loads(message.payload())["schema"] == "ehl.readings/1"


def _with(reading_changes: dict[str, object] | None = None, **changes: object) -> bytes:
    document = orjson.loads(orjson.dumps(SPEC_EXAMPLE))
    document.update(changes)
    if reading_changes:
        document["readings"][0].update(reading_changes)
    return orjson.dumps(document)


@pytest.mark.parametrize(
    "payload",
    [
        _with(schema="ehl.readings/2"),
        _with(msg_id=""),
        _with(msg_id="x" * 65),
        _with(msg_id="a\nb"),
        _with(sent_at="2026-11-25T08:01:07"),
        _with(readings=[]),
        _with(readings=SPEC_EXAMPLE["readings"] * 167),
        _with(extra=1),
        _with({"value": True}),
        _with({"value": "142"}),
        _with({"seq": -1}),
        _with({"seq": 1041.0}),
        _with({"at": "2026-11-25T08:00:30"}),
        _with({"note": "after lunch"}),
    ],
)
def test_the_model_refuses_what_the_contract_refuses(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        ReadingsMessage.model_validate_json(payload)


def test_the_model_refuses_a_missing_schema_even_though_it_has_one_value() -> None:
    document = dict(SPEC_EXAMPLE)
    del document["schema"]
    with pytest.raises(ValidationError, match="schema"):
        ReadingsMessage.model_validate_json(orjson.dumps(document))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True])
def test_a_reading_value_is_a_finite_number(value: float) -> None:
    with pytest.raises(ValidationError):
        ReadingItem(seq=1, metric="heart_rate", value=value, unit="/min", at=AT)


def test_a_naive_datetime_is_refused_in_python_too() -> None:
    with pytest.raises(ValidationError, match="UTC offset"):
        ReadingItem(seq=1, metric="heart_rate", value=72, unit="/min", at=datetime(2026, 1, 1))


def test_status_is_online_or_offline() -> None:
    assert StatusMessage.model_validate_json(b'{"state": "online"}').state == "online"
    assert StatusMessage(state="offline").payload() == b'{"state":"offline"}'
    for payload in (b'{"state": "away"}', b"{}", b'{"state": "online", "battery": 80}'):
        with pytest.raises(ValidationError):
            StatusMessage.model_validate_json(payload)


def test_feedback_reads_as_the_contract_writes_it_and_tolerates_additions() -> None:
    payload = (
        b'{"msg_id": "m1", "accepted": 2, "duplicates": 0, "rejected": [{"index": 2, '
        b'"seq": 1043, "reason": "out_of_range", "detail": "heart_rate 900 /min outside 20-300"}],'
        b' "added_later": true}'
    )
    feedback = FeedbackMessage.model_validate_json(payload)
    assert feedback.rejected == [
        FeedbackRejection(
            index=2,
            seq=1043,
            reason=ReasonCode.OUT_OF_RANGE,
            detail="heart_rate 900 /min outside 20-300",
        )
    ]
    assert "added_later" not in orjson.loads(feedback.payload())
