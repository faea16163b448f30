"""Validation of a readings message: bytes in, accepted and rejected readings out.

A pure function of the payload, the device's type and the receive time: no broker, no
database, no clock. It never raises on what a device sends (only on the caller's
mistakes: an unknown device type, a naive receive time), because it runs inside an ingest
worker that must not stop. Each reading is judged on its own; only a message that cannot
be read at all is rejected whole.

It is written as plain checks over what orjson returns rather than with the pydantic
models: bench/contract.py measures both designs, and on 500-reading messages these checks
do the whole job (shape, catalogue, units, clock) about as fast as pydantic checks the
shape alone, and clearly faster than pydantic followed by the same catalogue checks. The
tests hold both to the same verdict on the shape of a message.

This module is the entry point and judges the message as a whole; the envelope is read in
envelope.py, each reading checked in reading_checks.py, the clock rules are in clock.py and
the words of each rejection in rejection_details.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from ehealthlab.contract.catalogue import DEVICE_TYPES, device_type
from ehealthlab.contract.clock import clock_is_wrong
from ehealthlab.contract.envelope import read_envelope
from ehealthlab.contract.messages import MAX_PAYLOAD_BYTES, ReasonCode
from ehealthlab.contract.outcome import MessageOutcome, Rejection
from ehealthlab.contract.reading_checks import judge_readings


def validate_message(payload: bytes, *, device_type: str, received_at: datetime) -> MessageOutcome:
    """Judge every reading of a readings message from a device of `device_type`.

    `received_at` (timezone-aware) is when the broker delivered the message; it anchors
    the clock check. Raises only for an unknown `device_type` (InvalidInputError) or a
    naive `received_at` (ValueError): mistakes of the caller, never of the device.
    """
    measured_metrics = _measured_metrics(device_type)
    if received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _whole_rejection(
            payload,
            received_at,
            ReasonCode.PAYLOAD_TOO_LARGE,
            f"message is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES} (64 KiB): "
            "split the readings into smaller messages",
        )
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return _whole_rejection(payload, received_at, ReasonCode.MALFORMED_JSON, _malformed(exc))
    try:
        digest = content_digest(document) if type(document) is dict else None
    except orjson.JSONEncodeError:  # nested past orjson's serialising depth (its parser's is 1024)
        return _whole_rejection(
            payload,
            received_at,
            ReasonCode.SCHEMA_VIOLATION,
            "the message is nested too deeply to be a readings message (it has 3 levels: "
            "the message, its 'readings' array, each reading)",
        )
    envelope = read_envelope(document)
    if envelope.problems or envelope.msg_id is None or envelope.sent_at is None:
        return _whole_rejection(
            payload,
            received_at,
            ReasonCode.SCHEMA_VIOLATION,
            "; ".join(envelope.problems),
            msg_id=envelope.msg_id,
            sent_at=envelope.sent_at,
            digest=digest,
        )
    offset = received_at - envelope.sent_at
    accepted, rejected = judge_readings(
        envelope.readings,
        clock_offset=offset,
        measured_metrics=measured_metrics,
        device_type_code=device_type,
        received_at=received_at,
    )
    return MessageOutcome(  # by position (0.4 µs less than by keyword): once a message
        received_at,
        envelope.msg_id,
        envelope.sent_at,
        offset.total_seconds(),  # clock_offset_s
        clock_is_wrong(offset),  # clock_corrected
        tuple(accepted),
        tuple(rejected),
        None,  # message_rejection
        digest,  # content_digest
    )


def content_digest(document: Mapping[str, Any]) -> bytes:
    """What makes a message the same message when it is sent again (contract v1.1): all of
    it but `sent_at`, which a resend refreshes. With the device and `msg_id`, this tells a
    redelivery (same readings: nothing counts twice) from a new message reusing a `msg_id`.

    The first 16 bytes of a SHA-256 over the message without `sent_at`, keys sorted, so a
    device that re-serialises its message in another key order still sends the same one.
    """
    content = {key: value for key, value in document.items() if key != "sent_at"}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).digest()[:16]


def _measured_metrics(code: str) -> frozenset[str]:
    entry = DEVICE_TYPES.get(code)
    return entry.metrics if entry is not None else device_type(code).metrics


def _malformed(error: orjson.JSONDecodeError) -> str:
    detail = f"not valid JSON: {error}"
    if "NaN" in error.doc or "Infinity" in error.doc:
        detail += " (NaN and Infinity are not JSON numbers: leave such a reading out)"
    return detail


def _whole_rejection(
    payload: bytes,
    received_at: datetime,
    reason: ReasonCode,
    detail: str,
    *,
    msg_id: str | None = None,
    sent_at: datetime | None = None,
    digest: bytes | None = None,
) -> MessageOutcome:
    rejection = Rejection(
        index=None, seq=None, metric=None, at=None, reason=reason, detail=detail, raw=bytes(payload)
    )
    offset = None if sent_at is None else received_at - sent_at
    return MessageOutcome(
        received_at=received_at,
        msg_id=msg_id,
        sent_at=sent_at,
        clock_offset_s=None if offset is None else offset.total_seconds(),
        clock_corrected=False,
        accepted=(),
        rejected=(rejection,),
        message_rejection=rejection,
        content_digest=digest,
    )
