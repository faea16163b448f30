"""The messages of the device contract v1 as typed models, and the reason codes.

The models are the contract's reference form: the JSON Schemas in docs/schemas are
generated from them, simulators build messages with them, and tests use them to check the
fast validator (validation.py), which does not use them on the hot path.

Unknown fields are refused in what devices send (readings, status): the message is
versioned by its `schema` field, so an unknown field is almost always a typo (`"time"`
for `"at"`) or data the platform would silently drop, and a loud rejection during
integration serves a start-up better than a silent loss. Feedback, which devices read,
allows fields to be added later, and devices should ignore fields they do not know.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)

from ehealthlab.contract.timestamps import (
    RFC3339_PATTERN,
    TimestampError,
    format_timestamp,
    parse_timestamp,
)

#: the value of `schema` in a readings message of this contract version
READINGS_SCHEMA = "ehl.readings/1"
#: largest readings message, in bytes of UTF-8 JSON
MAX_PAYLOAD_BYTES = 64 * 1024
#: largest MQTT packet the broker takes (its `max_packet_size`): a bound on what one device
#: can make the broker and ingest hold, 16 times the contract's limit so that an oversized
#: message up to it is still kept with its reason; past it the broker disconnects the device
#: with MQTT reason 0x95, "Packet too large"
MAX_PACKET_BYTES = 1024 * 1024
MAX_READINGS = 500
MAX_MSG_ID_LENGTH = 64
#: `seq` is stored in a PostgreSQL bigint
MAX_SEQ = 2**63 - 1
#: no control characters: msg_id is stored as text and echoed back to the device
MSG_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"


class ReasonCode(StrEnum):
    """Why a reading, or a whole message, was rejected: exactly the contract's codes."""

    MALFORMED_JSON = "malformed_json"
    SCHEMA_VIOLATION = "schema_violation"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_METRIC = "unknown_metric"
    METRIC_NOT_FOR_DEVICE_TYPE = "metric_not_for_device_type"
    UNIT_MISMATCH = "unit_mismatch"
    OUT_OF_RANGE = "out_of_range"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"


def _timestamp(value: object) -> datetime:
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise TimestampError("a timestamp needs a UTC offset")
        return value
    if isinstance(value, str):
        return parse_timestamp(value)
    raise TimestampError("a timestamp must be an RFC 3339 date-time string")


#: an RFC 3339 date-time with a UTC offset; naive times are refused
Timestamp = Annotated[
    datetime,
    PlainValidator(_timestamp),
    PlainSerializer(format_timestamp, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339_PATTERN,
            "description": "RFC 3339 date-time with a UTC offset ('Z' or ±hh:mm)",
            "examples": ["2026-11-25T08:00:30+01:00"],
        }
    ),
]

MsgId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_MSG_ID_LENGTH, pattern=MSG_ID_PATTERN),
    Field(
        description=(
            "unique per device; a message sent again carries the same one and the same"
            " readings, and is then taken as a redelivery whatever its sent_at"
        )
    ),
]


class _DeviceMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ReadingItem(_DeviceMessage):
    """One measurement as a device reports it."""

    seq: Annotated[
        int,
        Field(ge=0, le=MAX_SEQ, description="per-device counter, +1 per reading, never reused"),
    ]
    metric: Annotated[str, Field(description="a metric code of the catalogue, e.g. heart_rate")]
    value: Annotated[float, Field(allow_inf_nan=False, description="a finite JSON number")]
    unit: Annotated[str, Field(description="a UCUM unit the metric accepts, e.g. mm[Hg]")]
    at: Annotated[Timestamp, Field(description="when it was measured, device clock")]


class ReadingsMessage(_DeviceMessage):
    """What a device publishes on ehl/v1/devices/{device_id}/readings."""

    model_config = ConfigDict(title="ehl.readings/1")

    #: always "ehl.readings/1" (pass it as `schema=`); required, like every field
    schema_: Literal["ehl.readings/1"] = Field(
        alias="schema", description="the message's version of the contract"
    )
    msg_id: MsgId
    sent_at: Annotated[
        Timestamp,
        Field(
            description=(
                "the device clock when it sent this copy of the message; a message sent"
                " again gets the time of the new send"
            )
        ),
    ]
    readings: Annotated[list[ReadingItem], Field(min_length=1, max_length=MAX_READINGS)]

    def payload(self) -> bytes:
        """The message as a device sends it (UTF-8 JSON)."""
        return self.model_dump_json(by_alias=True).encode()


class StatusMessage(_DeviceMessage):
    """Retained on ehl/v1/devices/{device_id}/status; the Last Will says offline."""

    state: Literal["online", "offline"]

    def payload(self) -> bytes:
        return self.model_dump_json().encode()


class FeedbackRejection(BaseModel):
    """One rejected reading (or, with index null, the whole message) in a feedback message."""

    model_config = ConfigDict(frozen=True)

    index: Annotated[
        int | None, Field(ge=0, description="position in `readings`; null: the whole message")
    ]
    seq: Annotated[int | None, Field(description="the reading's seq, when it could be read")]
    reason: ReasonCode
    detail: Annotated[str, Field(description="what was wrong, for a human")]


class FeedbackMessage(BaseModel):
    """Published on ehl/v1/devices/{device_id}/feedback when a message had rejections."""

    model_config = ConfigDict(frozen=True)

    msg_id: Annotated[
        str | None, Field(description="the message's msg_id; null when it could not be read")
    ]
    accepted: Annotated[int, Field(ge=0, description="readings stored")]
    duplicates: Annotated[int, Field(ge=0, description="readings already stored, not errors")]
    rejected: list[FeedbackRejection]

    def payload(self) -> bytes:
        return self.model_dump_json().encode()
