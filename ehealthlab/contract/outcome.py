"""What validating one message produces, and what ingest and the store do with it.

`MessageOutcome` is the contract between validation and the rest of ingest: accepted
readings go to the store, rejections are stored with their raw bytes, and
`build_feedback` turns the lot (plus what the store found) into the device's feedback.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import orjson

from ehealthlab.contract.messages import FeedbackMessage, FeedbackRejection, ReasonCode
from ehealthlab.contract.timestamps import format_timestamp
from ehealthlab.contract.wording import format_number
from ehealthlab.records import record


class ValidReading(NamedTuple):
    """A reading that passed validation, in its metric's canonical unit.

    A NamedTuple rather than a frozen dataclass: as immutable, and about four times
    cheaper to build; one is built per accepted reading (bench/contract.py).
    """

    #: position in the message's `readings`
    index: int  # type: ignore[assignment]  # shadows tuple.index: the contract's name wins
    seq: int
    metric: str
    #: the value in the metric's canonical unit
    value: float
    #: the metric's canonical UCUM unit
    unit: str
    #: the value and unit as the device sent them
    reported_value: float
    reported_unit: str
    #: when it was measured, by the device's clock
    at: datetime
    #: `at` moved by the clock offset when the device clock was wrong, else `at`
    measured_at: datetime
    clock_corrected: bool


@record
class Rejection:
    """A rejected reading, or (index None) a rejected message, with what to store about it."""

    #: position in `readings`; None when the whole message was rejected
    index: int | None
    #: the reading's seq, metric and at, when they could be read
    seq: int | None
    metric: str | None
    at: datetime | None
    reason: ReasonCode
    #: what was wrong, for the start-up's engineers
    detail: str
    #: the reading as compact JSON (re-serialised once parsed), or, for a whole-message
    #: rejection, the payload exactly as received
    raw: bytes


@record
class MessageOutcome:
    """What validation made of one message."""

    received_at: datetime
    #: None when the message was rejected before its msg_id could be read
    msg_id: str | None
    sent_at: datetime | None
    #: received_at - sent_at in seconds; None when sent_at could not be read
    clock_offset_s: float | None
    #: |clock_offset_s| > 120 s: every reading's measured_at is at + offset
    clock_corrected: bool
    accepted: tuple[ValidReading, ...]
    #: every rejection, the whole-message one included, in index order
    rejected: tuple[Rejection, ...]
    #: set when the message was rejected whole (then nothing is accepted)
    message_rejection: Rejection | None
    #: what identifies this message's content whatever its `sent_at` (`content_digest`);
    #: None when the payload was not a JSON object
    content_digest: bytes | None = None


def conflicting_duplicate(reading: ValidReading, stored_value: float) -> Rejection:
    """The rejection for a reading the store refused: same device, metric and `at` as a
    stored reading, another value (`stored_value`, canonical unit). The first one stays.

    `raw` is the reading re-serialised from what the device reported: by the time the
    store answers, the bytes of one reading are no longer at hand.
    """
    detail = (
        f"{reading.metric} at {format_timestamp(reading.at)} is already stored as "
        f"{format_number(stored_value)} {reading.unit}; this message says "
        f"{format_number(reading.value)} {reading.unit}: the first value stays"
    )
    raw = orjson.dumps(
        {
            "seq": reading.seq,
            "metric": reading.metric,
            "value": reading.reported_value,
            "unit": reading.reported_unit,
            "at": format_timestamp(reading.at),
        }
    )
    return Rejection(
        index=reading.index,
        seq=reading.seq,
        metric=reading.metric,
        at=reading.at,
        reason=ReasonCode.CONFLICTING_DUPLICATE,
        detail=detail,
        raw=raw,
    )


def build_feedback(
    outcome: MessageOutcome, duplicates: int = 0, conflicts: Sequence[Rejection] = ()
) -> FeedbackMessage | None:
    """The feedback to publish for a message, or None when nothing in it was rejected.

    `duplicates` and `conflicts` are what the store found among `outcome.accepted`:
    readings already stored with the same value (counted, not errors) and with another
    value (rejected, see `conflicting_duplicate`). Duplicates alone send no feedback.
    """
    rejections = [*outcome.rejected, *conflicts]
    if not rejections:
        return None
    stored = len(outcome.accepted) - duplicates - len(conflicts)
    if duplicates < 0 or stored < 0:
        raise ValueError(
            f"{duplicates} duplicates and {len(conflicts)} conflicts cannot come from "
            f"{len(outcome.accepted)} accepted readings"
        )
    rejections.sort(key=lambda rejection: -1 if rejection.index is None else rejection.index)
    return FeedbackMessage(
        msg_id=outcome.msg_id,
        accepted=stored,
        duplicates=duplicates,
        rejected=[
            FeedbackRejection(index=r.index, seq=r.seq, reason=r.reason, detail=r.detail)
            for r in rejections
        ],
    )
