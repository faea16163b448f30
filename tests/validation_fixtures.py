"""What the tests of validate_message share: a received message made by hand (`reading`,
`message`, MISSING to leave a field out), validated at a fixed receive time (`validate`), its
one rejection (`only_rejection`), and the contract's own example message (SPEC_EXAMPLE).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from ehealthlab.contract.outcome import MessageOutcome, Rejection
from ehealthlab.contract.validation import validate_message

CET = timezone(timedelta(hours=1))
RECEIVED_AT = datetime(2026, 11, 25, 8, 1, 8, tzinfo=CET)
AT = "2026-11-25T08:00:30+01:00"
MISSING = object()


def reading(**fields: Any) -> dict[str, Any]:
    """A valid heart-rate reading, with some fields replaced (MISSING removes one)."""
    item = {"seq": 1043, "metric": "heart_rate", "value": 72, "unit": "/min", "at": AT}
    item.update(fields)
    return {k: v for k, v in item.items() if v is not MISSING}


def message(*readings: Any, **fields: Any) -> dict[str, Any]:
    document = {
        "schema": "ehl.readings/1",
        "msg_id": "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11",
        "sent_at": "2026-11-25T08:01:07+01:00",
        "readings": list(readings) or [reading()],
    }
    document.update(fields)
    return {k: v for k, v in document.items() if v is not MISSING}


def validate(
    document: Any,
    device_type: str = "multiparameter_monitor",
    received_at: datetime = RECEIVED_AT,
) -> MessageOutcome:
    payload = document if isinstance(document, bytes) else orjson.dumps(document)
    return validate_message(payload, device_type=device_type, received_at=received_at)


def only_rejection(outcome: MessageOutcome) -> Rejection:
    assert outcome.message_rejection is None
    assert not outcome.accepted
    (rejection,) = outcome.rejected
    return rejection


def iso(moment: datetime) -> str:
    return moment.isoformat()


SPEC_EXAMPLE = b"""{
  "schema": "ehl.readings/1",
  "msg_id": "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11",
  "sent_at": "2026-11-25T08:01:07+01:00",
  "readings": [
    {"seq": 1041, "metric": "bp_systolic",  "value": 142, "unit": "mm[Hg]", "at": "2026-11-25T08:00:30+01:00"},
    {"seq": 1042, "metric": "bp_diastolic", "value": 91,  "unit": "mm[Hg]", "at": "2026-11-25T08:00:30+01:00"},
    {"seq": 1043, "metric": "heart_rate",   "value": 72,  "unit": "/min",   "at": "2026-11-25T08:00:30+01:00"}
  ]
}"""  # noqa: E501 (the contract's example, verbatim)
