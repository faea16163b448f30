"""Settling a judged message (ehealthlab.ingest.pipeline.settle): the shortcut taken for a
message with nothing rejected gives what the general path gives, for any such message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehealthlab.contract.messages import ReasonCode
from ehealthlab.ingest.pipeline import KnownDevice, _settled_any, judge, settle
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.readings import Conflict

NOW = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
TOPIC = "ehl/v1/devices/bpm-0001/readings"
MONITOR = KnownDevice("blood_pressure_monitor")
#: a valid reading of the monitor's three metrics, and one the contract refuses
METRICS = {
    "bp_systolic": ("mm[Hg]", 120),
    "bp_diastolic": ("mm[Hg]", 80),
    "heart_rate": ("/min", 60),
}


def message(
    readings: list[dict[str, object]], sent_at: datetime = NOW, qos: int = 1
) -> ReceivedMessage:
    payload = orjson.dumps(
        {"schema": "ehl.readings/1", "msg_id": "m-1", "sent_at": sent_at.isoformat(),
         "readings": readings}
    )  # fmt: skip
    return ReceivedMessage(TOPIC, payload, qos, False, 1, NOW, broker_stamped=True)


def reading(
    seq: int, metric: str, minutes_ago: int, value: float | None = None
) -> dict[str, object]:
    unit, typical = METRICS.get(metric, ("1", 1))
    at = NOW - timedelta(minutes=minutes_ago)
    return {"seq": seq, "metric": metric, "value": typical if value is None else value,
            "unit": unit, "at": at.isoformat()}  # fmt: skip


readings = st.lists(
    st.builds(
        reading,
        st.integers(0, 1000),
        st.sampled_from([*METRICS, "no_such_metric"]),
        st.integers(-20, 600),  # now and then in the future: refused
        st.one_of(st.none(), st.sampled_from([-5, 70, 400])),  # now and then out of range
    ),
    min_size=1,
    max_size=8,
)


@given(
    readings, st.data(), st.sampled_from([NOW, NOW - timedelta(hours=2)]), st.sampled_from([0, 1])
)
@settings(max_examples=300)
def test_settling_takes_the_shortcut_only_to_the_same_result(items, data, sent_at, qos):
    judged = judge(message(items, sent_at, qos), lambda device: MONITOR)
    duplicates = data.draw(st.integers(0, len(judged.outcome.accepted)))
    assert settle(judged, duplicates, ()) == _settled_any(judged, duplicates, ())


@pytest.mark.parametrize(
    ("items", "duplicates", "expected"),
    [
        # readings, accepted, duplicates, rejected, oldest and newest (minutes ago)
        ([reading(1, "heart_rate", 5)], 0, (1, 1, 0, 0, 5, 5)),
        ([reading(1, "heart_rate", 5)], 1, (1, 0, 1, 0, 5, 5)),
        (
            [
                reading(1, "bp_systolic", 9),
                reading(2, "bp_diastolic", 3),
                reading(3, "heart_rate", 7),
            ],
            2,
            (3, 1, 2, 0, 9, 3),
        ),
        ([reading(1, "heart_rate", 5), reading(2, "no_such_metric", 1)], 0, (2, 1, 0, 1, 5, 1)),
    ],
)
def test_the_message_log_counts_and_spans_what_came(items, duplicates, expected):
    settled = settle(judge(message(items), lambda device: MONITOR), duplicates, ())
    log = settled.log
    oldest, newest = (NOW - timedelta(minutes=m) for m in expected[4:])
    assert (log.readings, log.accepted, log.duplicates, log.rejected) == expected[:4]
    assert (log.oldest_at, log.newest_at) == (oldest, newest)
    assert (log.device_id, log.msg_id, log.qos) == ("bpm-0001", "m-1", 1)
    # feedback only when something was rejected
    assert (settled.feedback is None) == (log.rejected == 0)


def test_a_conflict_is_rejected_and_answered():
    judged = judge(message([reading(1, "heart_rate", 5)]), lambda device: MONITOR)
    conflict = Conflict(0, judged.readings[0], stored_value=61.0, stored_seq=9)
    settled = settle(judged, 0, [conflict])
    assert (settled.log.accepted, settled.log.rejected) == (0, 1)
    assert [r.reason for r in settled.conflict_rejections] == [ReasonCode.CONFLICTING_DUPLICATE]
    assert settled.feedback is not None and settled.feedback.rejected[0].index == 0
