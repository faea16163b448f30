"""The device contract v1: topics, metric catalogue, messages, validation and schemas.

Pure logic with no I/O, imported by the gateway, ingest, the FHIR mapping and the
simulators so that the contract is written down once. The normative text is
/work/shared/spec/device-contract.md; docs/device-contract.md explains it to start-ups.
"""

from ehealthlab.contract.catalogue import (
    DEVICE_TYPES,
    METRICS,
    DeviceType,
    LoincCode,
    MdcCode,
    Metric,
    UnitConversion,
    convert,
    device_type,
    metric,
)
from ehealthlab.contract.clock import CLOCK_TOLERANCE_S, FUTURE_TOLERANCE
from ehealthlab.contract.messages import (
    MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    READINGS_SCHEMA,
    FeedbackMessage,
    FeedbackRejection,
    ReadingItem,
    ReadingsMessage,
    ReasonCode,
    StatusMessage,
)
from ehealthlab.contract.outcome import (
    MessageOutcome,
    Rejection,
    ValidReading,
    build_feedback,
    conflicting_duplicate,
)
from ehealthlab.contract.topics import (
    INGEST_SHARED_SUBSCRIPTION,
    READINGS_WILDCARD,
    STATUS_WILDCARD,
    DeviceTopic,
    TopicKind,
    feedback_topic,
    is_valid_device_id,
    parse_device_topic,
    readings_topic,
    status_topic,
)
from ehealthlab.contract.validation import content_digest, validate_message

__all__ = [
    "CLOCK_TOLERANCE_S",
    "DEVICE_TYPES",
    "FUTURE_TOLERANCE",
    "INGEST_SHARED_SUBSCRIPTION",
    "MAX_PACKET_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "METRICS",
    "READINGS_SCHEMA",
    "READINGS_WILDCARD",
    "STATUS_WILDCARD",
    "DeviceTopic",
    "DeviceType",
    "FeedbackMessage",
    "FeedbackRejection",
    "LoincCode",
    "MdcCode",
    "MessageOutcome",
    "Metric",
    "ReadingItem",
    "ReadingsMessage",
    "ReasonCode",
    "Rejection",
    "StatusMessage",
    "TopicKind",
    "UnitConversion",
    "ValidReading",
    "build_feedback",
    "conflicting_duplicate",
    "content_digest",
    "convert",
    "device_type",
    "feedback_topic",
    "is_valid_device_id",
    "metric",
    "parse_device_topic",
    "readings_topic",
    "status_topic",
    "validate_message",
]
