"""The readings of a transaction Bundle as the device contract's readings messages: the items
of each device cut to the contract's limits (500 readings, 64 KiB), `msg_id` from
`Bundle.identifier`, `sent_at` from `Bundle.timestamp`, so that ingest's own validation
judges them as it judges the same readings published over MQTT. Pure.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from ehealthlab.contract.messages import (
    MAX_MSG_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    READINGS_SCHEMA,
)
from ehealthlab.fhir.mapping.codes import FHIR_BASE
from ehealthlab.fhir.transaction.plan import BundlePlan, Draft, EntryPlan, Fault

#: a contract message is cut before this size, leaving room for its envelope
_CHUNK_BYTES = MAX_PAYLOAD_BYTES - 1024
_MSG_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{FHIR_BASE}/Bundle")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class ContractMessage:
    """One readings message of the device contract, built from a device's entries."""

    device_id: str
    msg_id: str
    #: the contract's JSON (no readings when every reading of the device was a fault)
    payload: bytes
    #: the payload's readings: the entry, metric and element each came from
    sources: tuple[tuple[int, str, str], ...]
    #: faults of this device's entries (carried by its first message)
    faults: tuple[tuple[EntryPlan, Fault], ...] = ()
    #: the `sent_at` written in the payload
    sent_at: str = ""


def message_id_base(plan: BundlePlan, fallback: str) -> str:
    """The `msg_id` of the Bundle's messages: its identifier's value when it fits the
    contract (so a client retrying the same Bundle is recognised, as a device retrying a
    publication is), a UUID of the identifier when it does not, `fallback` without one."""
    if plan.identifier is None:
        return fallback
    system, value = plan.identifier
    if system is None and len(value) <= MAX_MSG_ID_LENGTH - 8 and not _CONTROL.search(value):
        return value
    return uuid.uuid5(_MSG_ID_NAMESPACE, f"{system or ''}|{value}").hex


def contract_messages(
    plan: BundlePlan, devices: Iterable[str], *, msg_id: str, sent_at: str
) -> list[ContractMessage]:
    """The contract messages of the entries whose device is among `devices` (the caller's
    active ones), per device, cut to the contract's limits (500 readings, 64 KiB)."""
    allowed = set(devices)
    by_device: dict[str, list[EntryPlan]] = {}
    for entry in plan.entries:
        if entry.refusal is None and entry.device_id in allowed:
            by_device.setdefault(entry.device_id, []).append(entry)
    messages: list[ContractMessage] = []
    for device_id, entries in by_device.items():
        faults = tuple((entry, fault) for entry in entries for fault in entry.faults)
        chunks = _chunks([(entry.index, draft) for entry in entries for draft in entry.drafts])
        for k, chunk in enumerate(chunks or [[]]):
            items = [draft.item for _, draft in chunk]
            payload = (
                orjson.dumps(
                    {
                        "schema": READINGS_SCHEMA,
                        "msg_id": _nth(msg_id, k, len(chunks)),
                        "sent_at": sent_at,
                        "readings": items,
                    }
                )
                if items
                else b""
            )
            messages.append(
                ContractMessage(
                    device_id=device_id,
                    msg_id=_nth(msg_id, k, len(chunks)),
                    payload=payload,
                    sources=tuple((i, draft.metric, draft.expression) for i, draft in chunk),
                    faults=faults if k == 0 else (),
                    sent_at=sent_at,
                )
            )
    return messages


def _nth(msg_id: str, k: int, count: int) -> str:
    return msg_id if count <= 1 else f"{msg_id}/{k + 1}"


def _chunks(drafts: Sequence[tuple[int, Draft]]) -> list[list[tuple[int, Draft]]]:
    chunks: list[list[tuple[int, Draft]]] = []
    size = 0
    for pair in drafts:
        item_size = len(orjson.dumps(pair[1].item)) + 1
        if not chunks or len(chunks[-1]) == MAX_READINGS or size + item_size > _CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(pair)
        size += item_size
    return chunks
