"""Bad input to ingest is kept with its reason and never crashes a worker: any payload is
judged without raising, a wrong topic or an unknown device is kept whole, and a corpus of
broken messages, through a real broker and store, ends up in dead letters while the worker
goes on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_fixtures import T0, message, pilot, workers

from ehealthlab.contract.topics import readings_topic
from ehealthlab.ingest.pipeline import KnownDevice, judge, refuse
from ehealthlab.mqtt import ReceivedMessage as Received

__all__ = ["pilot", "workers"]

NOW = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _received(payload: bytes, topic: str = "ehl/v1/devices/bpm-0001/readings") -> Received:
    return Received(topic, payload, 1, False, 1, NOW)


@given(
    st.one_of(
        st.binary(max_size=300),
        _JSON.map(lambda v: json.dumps(v).encode()),
    )
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_payload_is_judged_without_raising_and_every_rejection_has_a_reason(payload):
    judged = judge(_received(payload), lambda device: KnownDevice("multiparameter_monitor"))
    outcome = judged.outcome
    assert outcome.accepted or outcome.rejected
    assert all(r.reason and r.detail for r in judged.rejections)
    assert len(judged.readings) == len(outcome.accepted)
    if outcome.message_rejection is not None:
        assert [r.payload for r in judged.rejections] == [payload]


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("ehl/v1/devices/BAD_ID/readings", "unknown"),
        ("ehl/v1/devices/bpm-0001/readings", "bpm-0001"),
    ],
)
def test_a_wrong_topic_or_an_unknown_device_is_kept_whole(topic, device):
    judged = judge(_received(b'{"schema": "ehl.readings/1"}', topic), lambda device: None)
    [row] = judged.rejections
    assert (row.device_id, row.reason, row.payload) == (
        device,
        "schema_violation",
        b'{"schema": "ehl.readings/1"}',
    )


def _one_spo2(value: float) -> bytes:
    reading = {
        "seq": 1,
        "metric": "spo2",
        "value": value,
        "unit": "%",
        "at": "2026-03-10T08:00:00Z",
    }
    document = {
        "schema": "ehl.readings/1",
        "msg_id": "c",
        "sent_at": "2026-03-10T08:00:00Z",
        "readings": [reading],
    }
    return json.dumps(document).encode()  # the standard library writes NaN, as some devices do


CORPUS = {
    "truncated": (
        b'{"schema": "ehl.readings/1", "msg_id": "t", "readings": [{"seq": 1',
        "malformed_json",
    ),
    "not json": (b"\x00\xff\xfe garbage", "malformed_json"),
    "NaN": (_one_spo2(float("nan")), "malformed_json"),
    "wrong types": (
        b'{"schema": "ehl.readings/1", "msg_id": 7, "sent_at": true, "readings": "x"}',
        "schema_violation",
    ),
    "huge number": (_one_spo2(1e308), "out_of_range"),
    "huge seq": (_one_spo2(97).replace(b'"seq": 1', b'"seq": ' + b"9" * 30), "schema_violation"),
    # 14x the contract's 64 KiB, and still under the broker's 1 MiB packet limit
    "900 KiB": (b"[" + b"1," * (450 * 1024) + b"1]", "payload_too_large"),
}


def test_a_corpus_of_bad_messages_is_kept_with_reasons_and_the_worker_goes_on(pilot, workers):
    workers()
    device_id, password = pilot.register("multiparameter_monitor")
    with pilot.device(device_id, password) as device:
        for payload, _ in CORPUS.values():
            device.publish(readings_topic(device_id), payload, timeout=60)
        device.publish(
            readings_topic(device_id),
            message([{"seq": 2, "metric": "spo2", "value": 97, "unit": "%", "at": T0.isoformat()}]),
        )
    assert pilot.wait_for("SELECT count(*) FROM readings", [(1,)], timeout=30) == [(1,)]
    rows = pilot.query(
        "SELECT reason, payload_bytes, length(payload) FROM rejected_readings ORDER BY id"
    )
    assert [reason for reason, _, _ in rows] == [reason for _, reason in CORPUS.values()]
    assert [(size, kept) for _, size, kept in rows][-1] == (
        len(CORPUS["900 KiB"][0]),
    ) * 2  # all of it


def test_a_nul_byte_in_a_metric_never_sinks_its_neighbours(pilot, workers):
    workers()
    device_id, password = pilot.register("multiparameter_monitor")
    stamp = T0.isoformat()
    readings = [
        {"seq": 1, "metric": "spo2", "value": 97, "unit": "%", "at": stamp},
        {"seq": 2, "metric": "sp\u0000o2", "value": 97, "unit": "%", "at": stamp},
    ]
    with pilot.device(device_id, password) as device:
        device.publish(readings_topic(device_id), message(readings))
    assert pilot.wait_for("SELECT count(*) FROM readings", [(1,)]) == [(1,)]
    assert pilot.query("SELECT reason, metric, seq FROM rejected_readings") == [
        ("unknown_metric", None, 2)
    ]


def test_a_message_the_store_could_not_keep_is_filed_as_the_platforms_failure():
    judged = refuse(_received(b"{}"), "the store could not keep it: boom")
    assert judged.platform_failure
    assert [(r.reason, r.detail) for r in judged.rejections] == [
        ("platform_error", "the store could not keep it: boom")
    ]
    assert not judge(_received(b"{}"), lambda device: KnownDevice("thermometer")).platform_failure
