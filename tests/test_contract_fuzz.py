"""The contract's parser under hostile bytes (tests/hostile.py, and hypothesis' own byte
mutations of valid messages): validate_message never raises, never accepts a reading from a
damaged message, and keeps every rejection with a reason and a detail. The property tests of
test_contract_properties.py build their input with orjson.dumps, which cannot write what
these do (nesting past 254 levels, invalid UTF-8, a BOM, trailing bytes)."""

from __future__ import annotations

import os
import random

import orjson
import pytest
from hostile import KINDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_contract_properties import RECEIVED_AT, check_accounting, device_types

from ehealthlab.contract.messages import ReasonCode
from ehealthlab.contract.validation import validate_message

#: EHEALTHLAB_FUZZ_EXAMPLES raises it for a run by hand
EXAMPLES = int(os.environ.get("EHEALTHLAB_FUZZ_EXAMPLES", "600"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = orjson.dumps({
    "schema": "ehl.readings/1", "msg_id": "m-1", "sent_at": "2026-11-25T08:01:00+01:00",
    "readings": [{"seq": 1, "metric": "spo2", "value": 97, "unit": "%",
                  "at": "2026-11-25T08:00:00+01:00"}],
})  # fmt: skip


def judged(payload: bytes, device_type: str = "multiparameter_monitor"):
    outcome = validate_message(payload, device_type=device_type, received_at=RECEIVED_AT)
    for rejection in outcome.rejected:
        assert isinstance(rejection.reason, ReasonCode)
        assert rejection.detail.strip()
    return outcome


@FUZZ
@given(
    kind=st.sampled_from(sorted(KINDS)), seed=st.integers(0, 2**32 - 1), device_type=device_types
)
def test_hostile_messages_never_raise_and_nothing_of_them_is_accepted(kind, seed, device_type):
    payload = KINDS[kind][0](random.Random(seed), f"fuzz-{seed}")
    outcome = judged(payload, device_type)
    assert outcome.accepted == ()
    assert outcome.rejected
    document = None if outcome.message_rejection is not None else orjson.loads(payload)
    check_accounting(outcome, document)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255), st.integers(0, 2)),
        min_size=1,
        max_size=8,
    ),
    device_type=device_types,
)
def test_byte_mutations_of_a_valid_message_never_raise(edits, device_type):
    data = bytearray(VALID)
    for position, byte, action in edits:
        at = min(position, len(data) - 1)
        if action == 0:
            data[at] = byte
        elif action == 1:
            data.insert(at, byte)
        elif len(data) > 1:
            del data[at]
    outcome = judged(bytes(data), device_type)
    document = None if outcome.message_rejection is not None else orjson.loads(bytes(data))
    check_accounting(outcome, document)


@pytest.mark.parametrize("depth", [254, 255, 300, 1023, 1024, 1025, 100_000])
@pytest.mark.parametrize("where", ["readings", "extra field", "reading value"])
def test_nesting_deeper_than_the_serialiser_goes_is_refused_whole_not_raised(depth, where):
    """Found by this fuzzing: orjson parses 1,024 levels but writes 254, and the content
    digest re-serialises the message: a message nested 255-1,024 deep raised."""
    nested = "[" * depth + "]" * depth
    head = '{"schema": "ehl.readings/1", "msg_id": "deep", "sent_at": "2026-11-25T08:01:00+01:00"'
    reading = '{"seq": 1, "metric": "spo2", "unit": "%", "at": "2026-11-25T08:00:00+01:00"'
    body = {
        "readings": f'{head}, "readings": [{nested}]}}',
        "extra field": f'{head}, "readings": [1], "x": {nested}}}',
        "reading value": f'{head}, "readings": [{reading}, "value": {nested}}}]}}',
    }[where]
    outcome = judged(body.encode())
    assert outcome.accepted == ()
    assert outcome.rejected
