"""Topic names and device ids, as tables of what must and must not pass (like paho's
test_matcher)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ehealthlab.contract.topics import (
    INGEST_SHARED_SUBSCRIPTION,
    READINGS_WILDCARD,
    STATUS_WILDCARD,
    DeviceTopic,
    TopicKind,
    device_topic,
    feedback_topic,
    is_valid_device_id,
    parse_device_topic,
    readings_topic,
    status_topic,
)
from ehealthlab.errors import InvalidInputError

VALID_DEVICE_IDS = [
    "abc",
    "a1b",
    "0ab",
    "123",
    "bpm-0001",
    "acme-bp-7f3a",
    "abc-",
    "a--b",
    "a" * 64,
]

INVALID_DEVICE_IDS = [
    "",
    "ab",
    "a" * 65,
    "-abc",
    "ABC",
    "Abc",
    "ab_c",
    "ab.c",
    "ab c",
    "ab/c",
    "ab+c",
    "ab#c",
    "+",
    "#",
    "àbc",
    "abc\n",
    "\nabc",
    "abc\x00",
]


@pytest.mark.parametrize("device_id", VALID_DEVICE_IDS)
def test_valid_device_ids_are_accepted(device_id: str) -> None:
    assert is_valid_device_id(device_id)


@pytest.mark.parametrize("device_id", INVALID_DEVICE_IDS)
def test_invalid_device_ids_are_refused(device_id: str) -> None:
    assert not is_valid_device_id(device_id)


@pytest.mark.parametrize("device_id", [None, 123, b"abc", ["abc"]])
def test_a_device_id_that_is_not_a_string_is_refused(device_id: object) -> None:
    assert not is_valid_device_id(device_id)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (readings_topic, "ehl/v1/devices/bpm-0001/readings"),
        (status_topic, "ehl/v1/devices/bpm-0001/status"),
        (feedback_topic, "ehl/v1/devices/bpm-0001/feedback"),
    ],
)
def test_builders_give_the_contract_topics(build: Callable[[str], str], expected: str) -> None:
    assert build("bpm-0001") == expected


@pytest.mark.parametrize("device_id", INVALID_DEVICE_IDS)
@pytest.mark.parametrize("build", [readings_topic, status_topic, feedback_topic])
def test_builders_refuse_invalid_device_ids(build: Callable[[str], str], device_id: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid device id"):
        build(device_id)


def test_subscriptions_are_the_contract_ones() -> None:
    assert INGEST_SHARED_SUBSCRIPTION == "$share/ingest/ehl/v1/devices/+/readings"
    assert READINGS_WILDCARD == "ehl/v1/devices/+/readings"
    assert STATUS_WILDCARD == "ehl/v1/devices/+/status"


TOPICS_THAT_PARSE = [
    ("ehl/v1/devices/abc/readings", DeviceTopic("abc", TopicKind.READINGS)),
    ("ehl/v1/devices/bpm-0001/status", DeviceTopic("bpm-0001", TopicKind.STATUS)),
    ("ehl/v1/devices/bpm-0001/feedback", DeviceTopic("bpm-0001", TopicKind.FEEDBACK)),
    (f"ehl/v1/devices/{'a' * 64}/readings", DeviceTopic("a" * 64, TopicKind.READINGS)),
]

TOPICS_THAT_DO_NOT_PARSE = [
    "",
    "ehl/v1/devices/+/readings",
    "ehl/v1/devices/abc/+",
    "ehl/v1/devices/#",
    "ehl/v1/devices/abc/#",
    "$share/ingest/ehl/v1/devices/abc/readings",
    "ehl/v1/devices/abc/readings/extra",
    "ehl/v1/devices/abc/readings/",
    "/ehl/v1/devices/abc/readings",
    "ehl/v1/devices/abc",
    "ehl/v1/devices//readings",
    "ehl/v1/devices/ab/readings",
    "ehl/v1/devices/-ab/readings",
    "ehl/v1/devices/ABC/readings",
    "ehl/v1/devices/a/b/readings",
    "ehl/v1/devices/abc/reading",
    "ehl/v1/devices/abc/Readings",
    "ehl/v1/devices/abc/other",
    "ehl/v2/devices/abc/readings",
    "ehl/v1/device/abc/readings",
    "ehl/v1/devices/abc/readings\n",
    f"ehl/v1/devices/{'a' * 65}/readings",
]


@pytest.mark.parametrize(("topic", "expected"), TOPICS_THAT_PARSE)
def test_device_topics_parse(topic: str, expected: DeviceTopic) -> None:
    parsed = parse_device_topic(topic)
    assert parsed == expected
    assert parsed is not None
    device_id, kind = parsed  # unpacks as (device_id, kind)
    assert device_topic(device_id, kind) == topic


@pytest.mark.parametrize("topic", TOPICS_THAT_DO_NOT_PARSE)
def test_other_topics_do_not_parse(topic: str) -> None:
    assert parse_device_topic(topic) is None


@pytest.mark.parametrize("device_id", VALID_DEVICE_IDS)
@pytest.mark.parametrize("kind", list(TopicKind))
def test_every_built_topic_parses_back(device_id: str, kind: TopicKind) -> None:
    assert parse_device_topic(device_topic(device_id, kind)) == (device_id, kind)
