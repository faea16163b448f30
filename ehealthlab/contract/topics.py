"""MQTT topic names of the device contract v1, in one place.

Every topic the platform publishes or subscribes to is built here, so no f-string topic
appears anywhere else: gateway ACLs, ingest subscriptions and simulators all import these.
Builders refuse an invalid device id, because a device id containing `/`, `+` or `#`
would turn a topic into a different topic or into a wildcard.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

from ehealthlab.errors import InvalidInputError

#: every device topic starts with this
DEVICES_PREFIX = "ehl/v1/devices"

#: 3 to 64 characters of [a-z0-9-], first a letter or digit (the contract's rule)
DEVICE_ID_PATTERN = r"[a-z0-9][a-z0-9-]{2,63}"

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class TopicKind(StrEnum):
    """The last level of a device topic: what the message on it is."""

    READINGS = "readings"
    STATUS = "status"
    FEEDBACK = "feedback"


#: what ingest workers subscribe to: an MQTT 5 shared subscription, so workers split the load
INGEST_SHARED_SUBSCRIPTION = f"$share/ingest/{DEVICES_PREFIX}/+/{TopicKind.READINGS}"
#: every device's readings (a plain subscription, for tools and tests)
READINGS_WILDCARD = f"{DEVICES_PREFIX}/+/{TopicKind.READINGS}"
#: every device's retained status (online, or the Last Will's offline)
STATUS_WILDCARD = f"{DEVICES_PREFIX}/+/{TopicKind.STATUS}"

#: the platform's own topics, never a device's: ingest checks there at start that the broker
#: stamps receive times (stamped topics are those under ehl/)
PLATFORM_PROBE_PREFIX = "ehl/v1/platform/probe"

_DEVICE_TOPIC = re.compile(
    rf"{re.escape(DEVICES_PREFIX)}/(?P<device_id>{DEVICE_ID_PATTERN})"
    rf"/(?P<kind>{'|'.join(kind.value for kind in TopicKind)})"
)


class DeviceTopic(NamedTuple):
    """A device topic taken apart: whose it is and what it carries."""

    device_id: str
    kind: TopicKind


def is_valid_device_id(device_id: object) -> bool:
    """True when `device_id` follows the contract (3 to 64 of [a-z0-9-], no leading hyphen)."""
    return isinstance(device_id, str) and _DEVICE_ID.fullmatch(device_id) is not None


def _require_device_id(device_id: str) -> str:
    if not is_valid_device_id(device_id):
        raise InvalidInputError(
            f"invalid device id {device_id!r}: use 3 to 64 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return device_id


def device_topic(device_id: str, kind: TopicKind) -> str:
    """The topic of `kind` for one device; raises InvalidInputError for a bad device id."""
    return f"{DEVICES_PREFIX}/{_require_device_id(device_id)}/{kind}"


def readings_topic(device_id: str) -> str:
    """Where a device publishes its readings messages."""
    return device_topic(device_id, TopicKind.READINGS)


def status_topic(device_id: str) -> str:
    """Where a device publishes its retained online status and sets its offline Last Will."""
    return device_topic(device_id, TopicKind.STATUS)


def feedback_topic(device_id: str) -> str:
    """Where the platform tells a device which readings of a message it rejected."""
    return device_topic(device_id, TopicKind.FEEDBACK)


# a worker parses a device's topic for every message it receives (the regex and the enum
# call were 2 % of its CPU); a pilot has thousands of devices, and the broker lets a device
# publish only on its own topics, so the cache holds real topics, not whatever is sent
@lru_cache(maxsize=65_536)
def parse_device_topic(topic: str) -> DeviceTopic | None:
    """Take a concrete device topic apart; None for anything else.

    Wildcards, extra or missing levels, a shared-subscription prefix and invalid device
    ids all give None, so a caller never acts on a topic the contract does not define.
    """
    match = _DEVICE_TOPIC.fullmatch(topic)
    if match is None:
        return None
    return DeviceTopic(match["device_id"], TopicKind(match["kind"]))
