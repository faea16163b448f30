"""The feedback built from validate_message's outcome: the contract's example, nothing when
nothing was rejected, counts of what the store found, conflicting duplicates, whole
rejections, and counts that cannot be."""

from __future__ import annotations

import orjson
import pytest
from validation_fixtures import AT, SPEC_EXAMPLE, message, reading, validate

from ehealthlab.contract.messages import ReasonCode
from ehealthlab.contract.outcome import build_feedback, conflicting_duplicate


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
