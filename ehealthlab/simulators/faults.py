"""Faulty devices for conformance testing: what a firmware bug does to a message (pure).

A start-up's device gets units wrong, forgets `seq`, sends broken JSON or sends a message
twice; the LAB must answer each with the contract's reason and carry on. A simulated
device can do all of these on a configured share of its messages. Whether a message is
faulty, and how, depends only on the seed and the message's `msg_id`, so a run is
reproducible and a message sent again (after a lost connection) is faulty the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ehealthlab.contract.messages import MAX_MSG_ID_LENGTH, ReasonCode
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.payloads import encode


class FaultMode(StrEnum):
    """One kind of defect a device can have."""

    WRONG_UNITS = "wrong_units"
    MISSING_SEQ = "missing_seq"
    MALFORMED_JSON = "malformed_json"
    #: readings sent again (the contract counts them as duplicates: not an error)
    DUPLICATE = "duplicate"


#: what the contract says the platform answers to each defect (None: not an error)
EXPECTED_REASON: Mapping[FaultMode, ReasonCode | None] = {
    FaultMode.WRONG_UNITS: ReasonCode.UNIT_MISMATCH,
    FaultMode.MISSING_SEQ: ReasonCode.SCHEMA_VIOLATION,
    FaultMode.MALFORMED_JSON: ReasonCode.MALFORMED_JSON,
    FaultMode.DUPLICATE: None,
}

#: how device makers really misspell each accepted UCUM unit
MISSPELT_UNITS: Mapping[str, str] = {
    "mm[Hg]": "mmHg",
    "kPa": "kpa",
    "/min": "bpm",
    "%": "percent",
    "kg": "Kg",
    "g": "gr",
    "[lb_av]": "lbs",
    "Cel": "°C",
    "[degF]": "°F",
    "mg/dL": "mg/dl",
    "mmol/L": "mmol/l",
    "{steps}": "steps",
}


@dataclass(frozen=True, slots=True)
class FaultShares:
    """The share of a device's messages that have each defect; none by default.

    The shares are exclusive (a message has at most one defect), so they sum to at most 1.
    """

    wrong_units: float = 0.0
    missing_seq: float = 0.0
    malformed_json: float = 0.0
    duplicate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        shares = self.by_mode()
        if any(not (math.isfinite(s) and 0.0 <= s <= 1.0) for s in shares.values()):
            raise InvalidInputError("a fault share is a number from 0 to 1")
        if sum(shares.values()) > 1.0 + 1e-9:
            raise InvalidInputError("fault shares are exclusive: together at most 1")

    def by_mode(self) -> dict[FaultMode, float]:
        return {mode: getattr(self, mode.value) for mode in FaultMode}

    @property
    def any(self) -> bool:
        return any(self.by_mode().values())


def _uniform(seed: int, msg_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by its inputs (the same on every machine and Python)."""
    digest = hashlib.blake2b(f"{seed}\x00{msg_id}\x00{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


_AGAIN = "-again"


def resent_msg_id(msg_id: str) -> str:
    """The msg_id of a message that re-sends the readings of `msg_id` (unique in turn)."""
    return f"{msg_id[: MAX_MSG_ID_LENGTH - len(_AGAIN)]}{_AGAIN}"


def choose_fault(shares: FaultShares, msg_id: str) -> FaultMode | None:
    """The defect the message `msg_id` has, if any."""
    if not shares.any:
        return None
    draw = _uniform(shares.seed, msg_id, "mode")
    for mode, share in shares.by_mode().items():
        if draw < share:
            return mode
        draw -= share
    return None


def apply_fault(mode: FaultMode | None, message: Mapping[str, Any]) -> list[bytes]:
    """The payloads a device with `mode` publishes for `message`, in order.

    Wrong units and a missing `seq` spoil every reading; broken JSON cuts the message
    short. A duplicate sends the readings again in a second message, as a device does that
    lost track of what was acknowledged and re-sends its backlog: the same msg_id again
    would only be a QoS 1 redelivery, which the platform expects and does not count.
    """
    if mode is None:
        return [encode(message)]
    if mode is FaultMode.DUPLICATE:
        return [encode(message), encode({**message, "msg_id": resent_msg_id(message["msg_id"])})]
    if mode is FaultMode.MALFORMED_JSON:
        payload = encode(message)
        return [payload[: max(1, len(payload) // 2)]]
    readings = [dict(reading) for reading in message["readings"]]
    for reading in readings:
        if mode is FaultMode.WRONG_UNITS:
            reading["unit"] = MISSPELT_UNITS.get(reading["unit"], reading["unit"] + "s")
        else:
            reading.pop("seq", None)
    return [encode({**message, "readings": readings})]
