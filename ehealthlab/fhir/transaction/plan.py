"""What a FHIR transaction Bundle becomes, entry by entry: the plan the write path follows.

bundle.py and entry.py read a Bundle into these values; messages.py turns the drafts into
contract messages, delivery.py stores them and response.py answers for each entry from the
same plan. Kept apart so that every step shares one description of an entry: refused
(nothing stored), faulted (dead letters with the contract's reason code) or drafted
(reading items that ingest's own validation judges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ehealthlab.contract.messages import ReasonCode
from ehealthlab.fhir.bulk.export import Issue
from ehealthlab.fhir.mapping.fast import Json

BundleType = Literal["transaction", "batch"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An entry not taken at all: nothing of it is stored."""

    status: int
    code: str
    diagnostics: str
    expression: str


@dataclass(frozen=True, slots=True)
class Fault:
    """A reading rejected before the contract's validation could judge it: a dead letter
    with the contract's reason code."""

    reason: ReasonCode
    detail: str
    expression: str
    metric: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    """A reading item of the device contract, built from an Observation (or a component)."""

    metric: str
    item: Json
    expression: str


@dataclass(frozen=True, slots=True)
class EntryPlan:
    """What one Bundle entry becomes."""

    index: int
    #: the referenced device; None when refused before one could be read
    device_id: str | None
    #: the entry's resource as compact JSON: what its dead letters keep
    raw: bytes
    drafts: tuple[Draft, ...] = ()
    faults: tuple[Fault, ...] = ()
    refusal: Refusal | None = None
    #: warnings about what was ignored
    notes: tuple[Issue, ...] = ()
    #: the Observation's effective time as written (what a dead letter's `at` is read from)
    at: str | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


@dataclass(frozen=True, slots=True)
class BundlePlan:
    """A Bundle read and checked, each entry planned."""

    type: BundleType
    #: Bundle.identifier (system, value): the client's name for this delivery
    identifier: tuple[str | None, str] | None
    #: Bundle.timestamp as written: the device's clock when it sent the Bundle (`sent_at`)
    timestamp: str | None
    entries: tuple[EntryPlan, ...]

    def device_ids(self) -> set[str]:
        return {e.device_id for e in self.entries if e.device_id is not None and e.refusal is None}
