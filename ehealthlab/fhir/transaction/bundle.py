"""A FHIR transaction (or batch) Bundle of Observations read into the device contract's
reading items, entry by entry; messages.py makes them contract messages, response.py the
transaction-response Bundle that says what became of each entry. Pure.

A start-up whose device speaks FHIR posts what it measured; ingest must treat it exactly as
the same readings published over MQTT. So each Observation becomes the contract's reading
item(s) — `seq` from the identifier `{FHIR_BASE}/sid/reading-seq`, `metric` from a LOINC or
IEEE 11073 code of the catalogue, `value` and `unit` from `valueQuantity` (UCUM),
`at` from `effectiveDateTime` as written — and the items of each device become contract
messages (`msg_id` from `Bundle.identifier`, `sent_at` from `Bundle.timestamp`) that
ingest's own validation judges. What cannot become a reading item at all (no value, an
unknown code, no seq) is a *fault*: rejected with the contract's reason code before
validation, and kept as a dead letter like any rejected reading. An entry that is not an
Observation of one of the caller's devices is *refused*: nothing of it is stored, as the
broker refuses a publication on another device's topic.

The Bundle's own fields are read here; each entry is planned in entry.py, an Observation's
code and values become reading items in observation_readings.py, and plan.py describes
what each entry becomes.
"""

from __future__ import annotations

import orjson

from ehealthlab.contract.timestamps import TimestampError, parse_timestamp
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.transaction.entry import plan_entry, shown
from ehealthlab.fhir.transaction.plan import BundlePlan

#: entries one Bundle may hold (an MQTT message holds at most 500 readings)
MAX_ENTRIES = 1000


class BundleError(InvalidInputError):
    """The request as a whole is not a Bundle this server takes (400, or 413 when
    `too_large`); nothing of it is stored."""

    def __init__(self, message: str, *, code: str = "invalid", too_large: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large


def read_bundle(body: bytes) -> BundlePlan:
    """Read a transaction or batch Bundle; BundleError when it is not one this server takes.
    Never raises anything else, whatever the body."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"the body is not JSON: {exc}", code="structure") from None
    if type(document) is not dict or document.get("resourceType") != "Bundle":
        raise BundleError("POST /fhir takes a Bundle resource", code="structure")
    bundle_type = document.get("type")
    if bundle_type not in ("transaction", "batch"):
        raise BundleError(
            f"Bundle.type {shown(bundle_type)} is not processed here: send a transaction or "
            "batch Bundle",
            code="not-supported",
        )
    entries = document.get("entry", [])
    if type(entries) is not list:
        raise BundleError("Bundle.entry must be an array", code="structure")
    if len(entries) > MAX_ENTRIES:
        raise BundleError(
            f"the Bundle has {len(entries)} entries; send at most {MAX_ENTRIES} per request",
            code="too-costly",
            too_large=True,
        )
    return BundlePlan(
        type="transaction" if bundle_type == "transaction" else "batch",
        identifier=_identifier(document.get("identifier")),
        timestamp=_timestamp(document.get("timestamp")),
        entries=tuple(plan_entry(i, entry) for i, entry in enumerate(entries)),
    )


def _identifier(value: object) -> tuple[str | None, str] | None:
    if value is None:
        return None
    if type(value) is not dict or type(value.get("value")) is not str or not value["value"]:
        raise BundleError("Bundle.identifier needs a string value", code="structure")
    system = value.get("system")
    if system is not None and type(system) is not str:
        raise BundleError("Bundle.identifier.system must be a string", code="structure")
    return system, value["value"]


def _timestamp(value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise BundleError("Bundle.timestamp must be an instant", code="structure")
    try:
        parse_timestamp(value)
    except TimestampError as exc:
        raise BundleError(f"Bundle.timestamp: {exc}", code="value") from None
    return value
