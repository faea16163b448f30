"""Properties of validate_message over generated input: it never raises on what a device
sends, it accounts for every reading exactly once, valid messages pass whole, and it
agrees with the pydantic models on what is a well-formed message."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.clock import CLOCK_TOLERANCE_S
from ehealthlab.contract.messages import (
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    ReadingItem,
    ReadingsMessage,
    ReasonCode,
)
from ehealthlab.contract.outcome import MessageOutcome, build_feedback
from ehealthlab.contract.timestamps import (
    RFC3339_PATTERN,
    TimestampError,
    _parse,
    _parse_by_pattern,
    parse_timestamp,
)
from ehealthlab.contract.validation import validate_message

RECEIVED_AT = datetime(2026, 11, 25, 8, 1, 8, tzinfo=timezone(timedelta(hours=1)))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

# near-misses: values a device gets slightly wrong, to reach every check
near_timestamps = st.sampled_from(
    [
        "2026-11-25T07:00:30Z",
        "2026-11-25T08:00:30",
        "2026-11-25T09:30:00+01:00",
        "2026-02-30T08:00:30+01:00",
        "9999-12-31T23:59:59+00:00",
        "0001-01-01T00:00:00+00:00",
        "2026-11-25 08:00:30+01:00",
        "2026-11-25T08:00:30+01:60",
    ]
)
NEAR_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "seq": st.sampled_from([-1, 2**63, 2**64 - 1, 1.0, True, "1"]),
    "metric": st.sampled_from(["heartrate", "", "HEART_RATE", *METRICS]),
    "value": st.sampled_from([True, "72", None, -1e9, 1e308, 1.5e-300, 2**64 - 1, 100000.5]),
    "unit": st.sampled_from(
        sorted({u for m in METRICS.values() for u in m.accepted_units} | {"mmHg", "bpm", ""})
    ),
    "at": near_timestamps,
    "schema": st.sampled_from(["ehl.readings/2", "", None]),
    "msg_id": st.sampled_from(["", "m" * 65, "a\x00b", 42, None]),
    "sent_at": near_timestamps,
    "readings": st.sampled_from([[], {}, "x", None]),
}


@st.composite
def valid_reading_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A reading a multiparameter monitor may send, received at RECEIVED_AT."""
    entry = METRICS[draw(st.sampled_from(sorted(METRICS)))]
    unit = draw(st.sampled_from(entry.accepted_units))
    conversion = entry.conversions[unit]
    canonical = draw(st.integers(int(entry.minimum) + 1, int(entry.maximum) - 1))
    age = draw(st.integers(min_value=0, max_value=86400))
    return {
        "seq": draw(st.integers(0, MAX_SEQ)),
        "metric": entry.code,
        "value": canonical * conversion.denominator / conversion.numerator - conversion.offset,
        "unit": unit,
        "at": (RECEIVED_AT - timedelta(seconds=age)).isoformat(),
    }


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """`base` with one to three fields removed, replaced by near-misses or junk, or added."""
    document = dict(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*sorted(document), "note", "time"]))
        action = draw(st.sampled_from(["delete", "near", "junk"]))
        if action == "delete":
            document.pop(name, None)
        elif action == "near" and name in NEAR_VALUES:
            document[name] = draw(NEAR_VALUES[name])
        else:
            document[name] = draw(json_values)
    return document


near_readings = st.one_of(
    valid_reading_documents(), mutated(valid_reading_documents()), json_values
)


@st.composite
def valid_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "schema": "ehl.readings/1",
        "msg_id": draw(st.text(min_size=1, max_size=64).filter(str.isprintable)),
        "sent_at": (RECEIVED_AT - timedelta(seconds=draw(st.integers(-600, 600)))).isoformat(),
        "readings": draw(st.lists(near_readings, min_size=1, max_size=8)),
    }


near_messages = st.one_of(valid_envelopes(), mutated(valid_envelopes()), json_values)
device_types = st.sampled_from(sorted(DEVICE_TYPES))


def check_accounting(outcome: MessageOutcome, document: object) -> None:
    """Either one whole-message rejection, or every reading judged exactly once."""
    if outcome.message_rejection is not None:
        assert outcome.rejected == (outcome.message_rejection,)
        assert outcome.accepted == ()
        assert outcome.message_rejection.index is None
        return
    assert isinstance(document, dict)
    readings = document["readings"]
    indices = [r.index for r in outcome.accepted]
    indices += [r.index for r in outcome.rejected if r.index is not None]
    assert len(indices) == len(outcome.accepted) + len(outcome.rejected)
    assert sorted(indices) == list(range(len(readings)))
    for rejection in outcome.rejected:
        assert rejection.index is not None
        assert rejection.raw == orjson.dumps(readings[rejection.index])
        assert rejection.reason is not ReasonCode.CONFLICTING_DUPLICATE
        assert "\x00" not in rejection.detail


@FAST
@given(payload=st.binary(max_size=300), device_type=device_types)
def test_arbitrary_bytes_never_raise(payload: bytes, device_type: str) -> None:
    outcome = validate_message(payload, device_type=device_type, received_at=RECEIVED_AT)
    document = None
    if outcome.message_rejection is None:
        document = orjson.loads(payload)
    check_accounting(outcome, document)


@FAST
@given(document=json_values, device_type=device_types)
def test_arbitrary_json_never_raises(document: Any, device_type: str) -> None:
    outcome = validate_message(
        orjson.dumps(document), device_type=device_type, received_at=RECEIVED_AT
    )
    check_accounting(outcome, document)


@FAST
@given(document=near_messages, device_type=device_types)
def test_nearly_valid_messages_never_raise_and_every_reading_is_judged(
    document: dict[str, Any], device_type: str
) -> None:
    payload = orjson.dumps(document)
    outcome = validate_message(payload, device_type=device_type, received_at=RECEIVED_AT)
    check_accounting(outcome, document)
    feedback = build_feedback(outcome)
    assert (feedback is None) == (not outcome.rejected)


@FAST
@given(document=near_messages)
def test_the_validator_and_the_models_agree_on_the_shape(document: dict[str, Any]) -> None:
    payload = orjson.dumps(document)
    assume(len(payload) <= MAX_PAYLOAD_BYTES)
    outcome = validate_message(
        payload, device_type="multiparameter_monitor", received_at=RECEIVED_AT
    )
    shape_rejected = outcome.message_rejection is not None or any(
        r.reason is ReasonCode.SCHEMA_VIOLATION
        # a well-shaped `at` that the clock correction pushes below year 1 is refused too,
        # for its time, not its shape (found by hypothesis: at 0001-01-01, sent_at ahead)
        and "falls outside the years" not in r.detail
        for r in outcome.rejected
    )
    try:
        ReadingsMessage.model_validate_json(payload)
    except ValidationError:
        model_rejected = True
    else:
        model_rejected = False
    assert model_rejected == shape_rejected


@FAST
@given(item=near_readings)
def test_the_validator_and_the_models_agree_on_one_reading(item: dict[str, Any]) -> None:
    document = {
        "schema": "ehl.readings/1",
        "msg_id": "m",
        "sent_at": "2026-11-25T08:01:07+01:00",
        "readings": [item],
    }
    outcome = validate_message(
        orjson.dumps(document), device_type="multiparameter_monitor", received_at=RECEIVED_AT
    )
    validator_says_shape = any(r.reason is ReasonCode.SCHEMA_VIOLATION for r in outcome.rejected)
    try:
        ReadingItem.model_validate_json(orjson.dumps(item))
    except ValidationError:
        model_says_shape = True
    else:
        model_says_shape = False
    assert validator_says_shape == model_says_shape


offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[str, ReadingsMessage, datetime]:
    """A message every reading of which the contract accepts, and its receive time."""
    device_type = draw(device_types)
    received_at = draw(
        st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets
        )
    )
    clock_offset = timedelta(seconds=draw(st.integers(min_value=-7200, max_value=7200)))
    sent_at = (received_at - clock_offset).astimezone(draw(offsets))
    readings = []
    allowed = sorted(DEVICE_TYPES[device_type].metrics)
    for seq in draw(st.lists(st.integers(0, MAX_SEQ), min_size=1, max_size=20, unique=True)):
        entry = METRICS[draw(st.sampled_from(allowed))]
        unit = draw(st.sampled_from(entry.accepted_units))
        conversion = entry.conversions[unit]
        margin = (entry.maximum - entry.minimum) * 1e-6
        canonical = draw(st.floats(entry.minimum + margin, entry.maximum - margin))
        reported = canonical * conversion.denominator / conversion.numerator - conversion.offset
        age = timedelta(seconds=draw(st.integers(min_value=0, max_value=30 * 86400)))
        readings.append(
            ReadingItem(
                seq=seq,
                metric=entry.code,
                value=reported,
                unit=unit,
                at=(sent_at - age).astimezone(draw(offsets)),
            )
        )
    message = ReadingsMessage(
        schema="ehl.readings/1",
        msg_id=draw(
            st.text(
                st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1, max_size=64
            )
        ),
        sent_at=sent_at,
        readings=readings,
    )
    return device_type, message, received_at


@FAST
@given(valid=valid_messages())
def test_valid_messages_round_trip_with_every_reading_accepted(
    valid: tuple[str, ReadingsMessage, datetime],
) -> None:
    device_type, message, received_at = valid
    outcome = validate_message(message.payload(), device_type=device_type, received_at=received_at)
    assert outcome.message_rejection is None
    assert outcome.rejected == (), [r.detail for r in outcome.rejected]
    assert outcome.msg_id == message.msg_id
    offset = received_at - message.sent_at
    corrected = abs(offset.total_seconds()) > CLOCK_TOLERANCE_S
    assert outcome.clock_corrected is corrected
    assert len(outcome.accepted) == len(message.readings)
    for accepted, sent in zip(outcome.accepted, message.readings, strict=True):
        entry = METRICS[sent.metric]
        assert (accepted.seq, accepted.metric, accepted.unit) == (sent.seq, sent.metric, entry.unit)
        assert accepted.reported_value == sent.value
        assert accepted.value == entry.conversions[sent.unit].to_canonical(sent.value)
        assert accepted.at == sent.at
        assert accepted.measured_at == (sent.at + offset if corrected else sent.at)
    assert build_feedback(outcome) is None


@FAST
@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
    ),
    separator=st.sampled_from("Tt"),
)
def test_every_written_timestamp_parses_back(moment: datetime, separator: str) -> None:
    text = moment.isoformat()
    assert parse_timestamp(text) == moment
    assert parse_timestamp(text.replace("T", separator)) == moment
    assert parse_timestamp(moment.astimezone(UTC).isoformat().replace("+00:00", "Z")) == moment


@FAST
@given(text=st.from_regex(RFC3339_PATTERN) | st.text(max_size=30))
def test_the_parser_never_accepts_what_the_schema_pattern_refuses(text: str) -> None:
    try:
        parsed = parse_timestamp(text)
    except TimestampError:
        return
    assert re.fullmatch(RFC3339_PATTERN.strip("^$"), text)
    assert parsed.utcoffset() is not None


@FAST
@given(text=st.from_regex(RFC3339_PATTERN) | near_timestamps | st.text(max_size=40))
@example(text="2026-12-08T04:36:30.748174+00:00")
@example(text="2026-12-08T04:36:30.250Z")
@example(text="2026-12-08T04:36:30.Z")
@example(text="2026-12-08T04:36:30,5Z")  # fromisoformat reads the comma; RFC 3339 does not
@example(text="2026-12-08T04:36:30.2\u0665Z")  # an Arabic-Indic digit
@example(text="2026-12-08T24:00:00+01:00")
@example(text="2026-12-08T04:36:30+01:60")
def test_the_quick_reading_of_a_timestamp_agrees_with_the_pattern(text: str) -> None:
    """Common shapes are read without the regex; whatever that makes of a text (a moment, or
    a refusal), the regex's reading makes too."""

    def reading(parse: Any) -> datetime | type[Exception]:
        try:
            return parse(text)  # type: ignore[no-any-return]
        except TimestampError as exc:
            return type(exc)

    assert reading(_parse) == reading(_parse_by_pattern)


@FAST
@given(
    valid=valid_messages(),
    later=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
)
def test_a_message_sent_again_is_the_same_content_whatever_its_sent_at(
    valid: tuple[str, ReadingsMessage, datetime], later: timedelta
) -> None:
    """Contract v1.1: a resend refreshes sent_at and keeps msg_id and readings; its content
    digest is the same, whatever sent_at and the order of its keys."""
    device_type, message, received_at = valid
    document = orjson.loads(message.payload())
    resent = {key: document[key] for key in reversed(list(document))}  # keys in another order
    resent["sent_at"] = (message.sent_at + later).isoformat()
    resent["readings"] = [dict(reversed(list(item.items()))) for item in document["readings"]]

    def digest(payload: dict[str, Any]) -> bytes | None:
        outcome = validate_message(
            orjson.dumps(payload), device_type=device_type, received_at=received_at
        )
        return outcome.content_digest

    assert digest(document) is not None
    assert digest(resent) == digest(document)
    other_readings = {**document, "readings": document["readings"][:-1] or [{"seq": 0}]}
    assert digest(other_readings) != digest(document)
    assert digest({**document, "msg_id": document["msg_id"] + "x"}) != digest(document)


@pytest.mark.parametrize(
    ("payload", "has_digest"),
    [
        (b"not json", False),
        (b"[1, 2]", False),  # not an object: no msg_id either
        (b'{"msg_id": "m"}', True),  # refused whole, yet known again by its content
        (b'{"schema": "ehl.readings/1", "msg_id": "m", "sent_at": "x", "readings": []}', True),
    ],
)
def test_only_a_json_object_has_a_content_digest(payload: bytes, has_digest: bool) -> None:
    outcome = validate_message(payload, device_type="thermometer", received_at=RECEIVED_AT)
    assert (outcome.content_digest is not None) is has_digest
