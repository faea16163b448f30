"""From a received MQTT message to what the store and the device must get. Pure.

`judge` turns one message into store rows (accepted readings, rejections) via the device
contract's validation; `settle` combines what the store then found (duplicates, conflicts)
into the message's log row, its extra rejections and the device's feedback. The worker only
moves these values between the broker and the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.messages import FeedbackMessage, ReasonCode
from ehealthlab.contract.outcome import (
    MessageOutcome,
    Rejection,
    ValidReading,
    build_feedback,
    conflicting_duplicate,
)
from ehealthlab.contract.topics import TopicKind, parse_device_topic
from ehealthlab.contract.validation import validate_message
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.records import record
from ehealthlab.store.readings import Conflict, ReadingRow
from ehealthlab.store.rejections import RejectedRow

#: how a message from something that is not a registered device's readings topic is filed
UNKNOWN_DEVICE = "unknown"
#: the reason of a message kept whole because the platform could not store it (not a contract
#: reason code: devices never see it)
PLATFORM_ERROR = "platform_error"


@record
class JudgedMessage:
    """One message after validation: what goes into the store, and why."""

    message: ReceivedMessage
    device_id: str
    outcome: MessageOutcome
    readings: tuple[ReadingRow, ...]  # parallel to outcome.accepted
    rejections: tuple[RejectedRow, ...]
    #: kept whole because the platform could not store it, not for anything the device did:
    #: no feedback goes to the device (it would only carry our database's error)
    platform_failure: bool = False


@record
class MessageLog:
    """A row of `device_messages`: how one readings message arrived and what became of it."""

    device_id: str
    received_at: datetime
    msg_id: str | None
    qos: int
    payload_bytes: int
    readings: int
    accepted: int
    duplicates: int
    rejected: int
    clock_offset_s: float | None
    oldest_at: datetime | None
    newest_at: datetime | None


@record
class Settled:
    """What the store's verdict adds to a judged message."""

    log: MessageLog
    conflict_rejections: tuple[RejectedRow, ...]
    feedback: FeedbackMessage | None


@lru_cache(maxsize=65_536)  # a SHA-256 a message was 3 % of a worker's CPU
def partition_of(topic: str, partitions: int) -> int:
    """Which of `partitions` workers owns a message, by its device (a SHA-256 of the id: the
    same in every process and evenly spread — crc32's low bits are not, for ids that differ
    only in a few hex digits); anything that is not a device's topic belongs to partition
    0, so it is kept as a dead letter exactly once."""
    parsed = parse_device_topic(topic)
    if parsed is None or partitions <= 1:
        return 0
    digest = hashlib.sha256(parsed.device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """What ingest needs to know of a registered device."""

    device_type: str
    simulated: bool = False


def judge(
    message: ReceivedMessage, device_of: Callable[[str], KnownDevice | None]
) -> JudgedMessage:
    """Validate one message from the broker; never raises on what the device sent.

    The receive time is the broker's; a device registered as simulated may state its own in
    simulated time (an accelerated or backfilled pilot), which is then used instead.
    """
    topic = parse_device_topic(message.topic)
    if topic is None or topic.kind is not TopicKind.READINGS:
        return _whole(message, UNKNOWN_DEVICE, f"not a device readings topic: {message.topic!r}")
    device = device_of(topic.device_id)
    if device is None:
        return _whole(message, topic.device_id, f"device {topic.device_id!r} is not registered")
    if device.simulated and message.simulated_received_at is not None:
        message = replace(message, received_at=message.simulated_received_at)
    outcome = validate_message(
        message.payload, device_type=device.device_type, received_at=message.received_at
    )
    offset = outcome.clock_offset_s if outcome.clock_offset_s is not None else 0.0
    device_id = topic.device_id
    readings = tuple([_reading_row(device_id, outcome, r, offset) for r in outcome.accepted])
    rejections = (
        tuple([_rejected_row(device_id, outcome, r) for r in outcome.rejected])
        if outcome.rejected
        else ()
    )
    return JudgedMessage(message, device_id, outcome, readings, rejections)


def settle(judged: JudgedMessage, duplicates: int, conflicts: Sequence[Conflict]) -> Settled:
    """The log row, conflict rejections and feedback of a message once the store answered.

    `conflicts` index into `judged.readings` (equivalently `judged.outcome.accepted`).
    """
    if not conflicts and not judged.outcome.rejected:
        return _settled_clean(judged, duplicates)
    return _settled_any(judged, duplicates, conflicts)


def _settled_any(judged: JudgedMessage, duplicates: int, conflicts: Sequence[Conflict]) -> Settled:
    outcome = judged.outcome
    conflict_rejections = [
        conflicting_duplicate(outcome.accepted[c.index], c.stored_value) for c in conflicts
    ]
    ats = [r.at for r in outcome.accepted] + [r.at for r in outcome.rejected if r.at is not None]
    item_rejections = [r for r in outcome.rejected if r.index is not None]
    log = MessageLog(
        device_id=judged.device_id,
        received_at=outcome.received_at,
        msg_id=outcome.msg_id,
        qos=judged.message.qos,
        payload_bytes=len(judged.message.payload),
        readings=len(outcome.accepted) + len(item_rejections),
        accepted=len(outcome.accepted) - duplicates - len(conflicts),
        duplicates=duplicates,
        rejected=len(outcome.rejected) + len(conflicts),
        clock_offset_s=outcome.clock_offset_s,
        oldest_at=min(ats, default=None),
        newest_at=max(ats, default=None),
    )
    return Settled(
        log=log,
        conflict_rejections=tuple(
            _rejected_row(judged.device_id, outcome, r) for r in conflict_rejections
        ),
        feedback=build_feedback(outcome, duplicates, conflict_rejections),
    )


def _settled_clean(judged: JudgedMessage, duplicates: int) -> Settled:
    """`settle` for a message with nothing rejected, by the contract or the store: almost
    every message, and one a worker settles thousands of times a second."""
    outcome = judged.outcome
    accepted = outcome.accepted
    oldest: datetime | None
    newest: datetime | None
    if len(accepted) == 1:
        oldest = newest = accepted[0].at
    else:
        ats = [r.at for r in accepted]
        oldest, newest = min(ats, default=None), max(ats, default=None)
    log = MessageLog(
        judged.device_id, outcome.received_at, outcome.msg_id, judged.message.qos,
        len(judged.message.payload), len(accepted), len(accepted) - duplicates, duplicates, 0,
        outcome.clock_offset_s, oldest, newest,
    )  # fmt: skip
    return Settled(log, (), None)


def _reading_row(
    device_id: str, outcome: MessageOutcome, reading: ValidReading, offset: float
) -> ReadingRow:
    return ReadingRow(  # by position: a worker builds one a reading
        device_id,
        reading.metric,
        reading.at,
        reading.value,
        reading.measured_at,
        outcome.received_at,
        reading.seq,
        outcome.msg_id or "",
        offset,
        reading.clock_corrected,
        None if reading.reported_unit == reading.unit else reading.reported_unit,
    )


def _rejected_row(device_id: str, outcome: MessageOutcome, rejection: Rejection) -> RejectedRow:
    measured_at = rejection.at
    if rejection.at is not None and outcome.clock_corrected and outcome.clock_offset_s is not None:
        try:
            measured_at = rejection.at + timedelta(seconds=outcome.clock_offset_s)
        except OverflowError:  # a timestamp near year 1 or 9999, rejected for that: no day
            measured_at = None
    return RejectedRow(
        received_at=outcome.received_at,
        device_id=device_id,
        reason=str(rejection.reason),
        detail=rejection.detail,
        payload=rejection.raw,
        msg_id=outcome.msg_id,
        item_index=rejection.index,
        seq=rejection.seq,
        # only a catalogue code: a device's free text (a NUL byte, say) would make the
        # database refuse the whole batch, sinking the message's valid readings
        metric=rejection.metric if rejection.metric in METRICS else None,
        at=rejection.at,
        measured_at=measured_at,
    )


def refuse(message: ReceivedMessage, detail: str) -> JudgedMessage:
    """A message kept as a dead letter whole, for a reason outside the contract's checks."""
    topic = parse_device_topic(message.topic)
    judged = _whole(message, topic.device_id if topic else UNKNOWN_DEVICE, detail)
    # not one of the contract's reasons: nothing the device did, so it must not count in
    # the device's rejected_share nor be sent to it
    rows = tuple(replace(row, reason=PLATFORM_ERROR) for row in judged.rejections)
    return replace(judged, rejections=rows, platform_failure=True)


def _whole(message: ReceivedMessage, device_id: str, detail: str) -> JudgedMessage:
    """A message refused before validation (not a registered device's readings topic)."""
    rejection = Rejection(
        index=None,
        seq=None,
        metric=None,
        at=None,
        reason=ReasonCode.SCHEMA_VIOLATION,
        detail=detail,
        raw=message.payload,
    )
    outcome = MessageOutcome(
        received_at=message.received_at,
        msg_id=None,
        sent_at=None,
        clock_offset_s=None,
        clock_corrected=False,
        accepted=(),
        rejected=(rejection,),
        message_rejection=rejection,
    )
    row = _rejected_row(device_id[:64], outcome, rejection)
    return JudgedMessage(message, device_id[:64], outcome, (), (row,))
