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

A blood-pressure panel (85354-9) gives two readings: systolic with the entry's seq, diastolic
with seq + 1, as the device contract's example numbers a cuff inflation's readings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from ehealthlab.contract.catalogue import (
    BLOOD_PRESSURE_PANEL,
    LOINC_SYSTEM,
    MDC_SYSTEM,
    METRICS,
    UCUM_SYSTEM,
)
from ehealthlab.contract.messages import MAX_SEQ, ReasonCode
from ehealthlab.contract.timestamps import TimestampError, parse_timestamp
from ehealthlab.contract.topics import is_valid_device_id
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.bulk.export import Issue
from ehealthlab.fhir.mapping.codes import (
    BLOOD_PRESSURE,
    DIASTOLIC,
    FHIR_BASE,
    MDC_BLOOD_PRESSURE_COMPOUND,
    SYSTOLIC,
)
from ehealthlab.fhir.mapping.fast import Json

#: Observation.identifier system whose value is the device's reading counter (`seq`)
READING_SEQ_SYSTEM = f"{FHIR_BASE}/sid/reading-seq"
#: entries one Bundle may hold (an MQTT message holds at most 500 readings)
MAX_ENTRIES = 1000
_DEVICE_REFERENCE = re.compile(r"(?:.*/)?Device/(?P<id>[^/]+)")
_FINAL = "final"

BundleType = Literal["transaction", "batch"]


def _codes() -> dict[tuple[str, str], str]:
    """(system, code) → metric, or BLOOD_PRESSURE for the panel, from the catalogue."""
    table = {
        (LOINC_SYSTEM, BLOOD_PRESSURE_PANEL.code): BLOOD_PRESSURE,
        (MDC_SYSTEM, MDC_BLOOD_PRESSURE_COMPOUND.code): BLOOD_PRESSURE,
    }
    for metric in METRICS.values():
        for loinc in metric.loinc:
            table[(LOINC_SYSTEM, loinc.code)] = metric.code
        for term in metric.mdc:
            table[(MDC_SYSTEM, str(term.code))] = metric.code
    return table


_CODES = _codes()


class BundleError(InvalidInputError):
    """The request as a whole is not a Bundle this server takes (400, or 413 when
    `too_large`); nothing of it is stored."""

    def __init__(self, message: str, *, code: str = "invalid", too_large: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large


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
            f"Bundle.type {_shown(bundle_type)} is not processed here: send a transaction or "
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
        entries=tuple(_plan_entry(i, entry) for i, entry in enumerate(entries)),
    )


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) and len(value) <= 40 else "given"


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


# -- one entry ---------------------------------------------------------------------------------


def _plan_entry(index: int, entry: object) -> EntryPlan:
    where = f"Bundle.entry[{index}]"
    if type(entry) is not dict:
        return EntryPlan(
            index,
            None,
            b"",
            refusal=Refusal(400, "structure", "a Bundle entry must be an object", where),
        )
    resource = entry.get("resource")
    raw = orjson.dumps(resource)
    if type(resource) is not dict or resource.get("resourceType") != "Observation":
        return EntryPlan(
            index,
            None,
            raw,
            refusal=Refusal(
                400, "not-supported", "only Observations can be delivered here", f"{where}.resource"
            ),
        )
    refusal = _request_refusal(entry.get("request"), where)
    if refusal is not None:
        return EntryPlan(index, None, raw, refusal=refusal)
    device_id = _device_id(resource.get("device"))
    if device_id is None:
        return EntryPlan(
            index,
            None,
            raw,
            refusal=Refusal(
                400,
                "required",
                "Observation.device must reference the device that measured it, "
                "as Device/{device_id}",
                f"{where}.resource.device",
            ),
        )
    return replace(_observation(index, device_id, resource, raw), at=_effective(resource))


def _request_refusal(request: object, where: str) -> Refusal | None:
    if type(request) is not dict:
        return Refusal(
            400,
            "required",
            "entry.request is required: method POST, url Observation",
            f"{where}.request",
        )
    method, url = request.get("method"), request.get("url")
    if method != "POST":
        return Refusal(
            405,
            "not-supported",
            f"entry.request.method {_shown(method)}: only "
            "POST (create) of an Observation is supported",
            f"{where}.request.method",
        )
    if url != "Observation":
        return Refusal(
            400,
            "not-supported",
            f"entry.request.url {_shown(url)}: use 'Observation'",
            f"{where}.request.url",
        )
    return None


def _device_id(reference: object) -> str | None:
    if type(reference) is not dict or type(reference.get("reference")) is not str:
        return None
    match = _DEVICE_REFERENCE.fullmatch(reference["reference"])
    if match is None or not is_valid_device_id(match["id"]):
        return None
    return match["id"]


def _observation(index: int, device_id: str, resource: dict[str, Any], raw: bytes) -> EntryPlan:
    where = f"Bundle.entry[{index}].resource"
    # the seq first: a dead letter keeps it whenever it can be read (loss_rate counts it)
    seq, seq_fault = _seq(resource.get("identifier"), where)
    invalid = _fhir_problems(resource)
    if invalid is not None:
        detail = f"not a valid FHIR R4 Observation: {invalid}"
        fault = Fault(ReasonCode.SCHEMA_VIOLATION, detail, where, seq=seq)
        return EntryPlan(index, device_id, raw, faults=(fault,))
    notes = _notes(resource, where)
    concept = _concept(resource.get("code"), f"{where}.code")
    if isinstance(concept, Fault):
        return EntryPlan(index, device_id, raw, faults=(_with(concept, None, seq),), notes=notes)
    metric = None if concept == BLOOD_PRESSURE else concept
    problem = seq_fault or _common_fault(resource, where)
    at = _effective(resource)
    if problem is not None or seq is None or at is None:
        problem = problem or Fault(ReasonCode.SCHEMA_VIOLATION, "no seq or time", where)
        fault = _with(problem, metric, seq)
        return EntryPlan(index, device_id, raw, faults=(fault,), notes=notes)
    if concept == BLOOD_PRESSURE:
        drafts, faults, more = _panel(resource, seq, at, where)
        return EntryPlan(index, device_id, raw, drafts, faults, notes=notes + more)
    draft = _reading(concept, resource, seq, at, where)
    if isinstance(draft, Fault):
        return EntryPlan(index, device_id, raw, faults=(draft,), notes=notes)
    if resource.get("component"):
        notes += (
            Issue(
                "warning",
                "informational",
                "Observation.component is ignored: only a blood-pressure panel's components "
                "are readings",
                (f"{where}.component",),
            ),
        )
    return EntryPlan(index, device_id, raw, (draft,), notes=notes)


def _with(fault: Fault, metric: str | None, seq: int | None) -> Fault:
    return Fault(fault.reason, fault.detail, fault.expression, metric, seq)


def _fhir_problems(resource: dict[str, Any]) -> str | None:
    """What makes the resource an invalid R4 Observation (per fhir.resources' R4B model),
    or None. The input is never echoed back."""
    try:
        Observation.model_validate(resource)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'Observation'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        ]
        extra = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return "; ".join(problems[:3]) + extra
    except (ValueError, TypeError) as exc:  # a validator of the library failing otherwise
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _notes(resource: dict[str, Any], where: str) -> tuple[Issue, ...]:
    ignored = [name for name in ("subject", "performer", "encounter") if name in resource]
    if not ignored:
        return ()
    return (
        Issue(
            "warning",
            "informational",
            f"Observation.{', '.join(ignored)} ignored: the platform attributes a reading to "
            "the patient (and provider) whose enrolment with the device covers its time",
            tuple(f"{where}.{name}" for name in ignored),
        ),
    )


def _seq(identifiers: object, where: str) -> tuple[int | None, Fault | None]:
    values = [
        item.get("value")
        for item in (identifiers if isinstance(identifiers, list) else [])
        if isinstance(item, dict) and item.get("system") == READING_SEQ_SYSTEM
    ]
    missing = (
        f"an identifier with system {READING_SEQ_SYSTEM} is required: the device's reading "
        "counter (`seq` of the device contract: +1 for every reading taken, never reused)"
    )
    if len(values) != 1:
        detail = missing if not values else f"give one identifier with system {READING_SEQ_SYSTEM}"
        return None, Fault(ReasonCode.SCHEMA_VIOLATION, detail, f"{where}.identifier")
    value = values[0]
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return None, Fault(
            ReasonCode.SCHEMA_VIOLATION,
            f"the {READING_SEQ_SYSTEM} identifier's value must be a whole number from 0",
            f"{where}.identifier",
        )
    # compare lengths first: int() refuses strings of more than 4,300 digits
    if len(value.lstrip("0")) > len(str(MAX_SEQ)) or int(value) > MAX_SEQ:
        return None, Fault(
            ReasonCode.SCHEMA_VIOLATION,
            f"seq {value[:24]}{'…' if len(value) > 24 else ''} exceeds {MAX_SEQ}",
            f"{where}.identifier",
        )
    seq = int(value)
    return seq, None


def _common_fault(resource: dict[str, Any], where: str) -> Fault | None:
    status = resource.get("status")
    if status != _FINAL:
        return Fault(
            ReasonCode.SCHEMA_VIOLATION,
            f"Observation.status {_shown(status)}: only "
            "final readings are taken (a stored reading is never revised)",
            f"{where}.status",
        )
    if _effective(resource) is None:
        return Fault(
            ReasonCode.SCHEMA_VIOLATION,
            "effectiveDateTime is required: when it was "
            "measured, with a UTC offset (a period is not a reading's time)",
            f"{where}.effectiveDateTime",
        )
    return None


def _effective(resource: dict[str, Any]) -> str | None:
    for name in ("effectiveDateTime", "effectiveInstant"):
        value = resource.get(name)
        if isinstance(value, str):
            return value
    return None


def _concept(concept: object, where: str) -> str | Fault:
    """The metric (or BLOOD_PRESSURE) a CodeableConcept names, or why it names none."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    found: list[str] = []
    written: list[str] = []
    for coding in codings if isinstance(codings, list) else []:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            written.append(f"{system}|{code}"[:80])
            metric = _CODES.get((system, code))
            if metric is not None and metric not in found:
                found.append(metric)
    if not found:
        got = f" (got {', '.join(written[:3])})" if written else ""
        return Fault(
            ReasonCode.UNKNOWN_METRIC,
            "no LOINC or IEEE 11073 code of the catalogue "
            f"in the code{got}; see docs/fhir.md for the codes of each metric",
            where,
        )
    if len(found) > 1:
        return Fault(
            ReasonCode.SCHEMA_VIOLATION,
            f"the code's codings name different measurements ({', '.join(found)})",
            where,
        )
    return found[0]


def _reading(metric: str, element: dict[str, Any], seq: int, at: str, where: str) -> Draft | Fault:
    quantity = element.get("valueQuantity")
    if not isinstance(quantity, dict) or "value" not in quantity:
        return Fault(
            ReasonCode.SCHEMA_VIOLATION,
            f"{metric}: valueQuantity with a value is "
            "required (a reading without a value is not sent)",
            f"{where}.valueQuantity",
            metric,
            seq,
        )
    value, unit, system = quantity.get("value"), quantity.get("code"), quantity.get("system")
    if type(value) not in (int, float):
        return Fault(
            ReasonCode.SCHEMA_VIOLATION,
            f"{metric}: valueQuantity.value must be a number",
            f"{where}.valueQuantity.value",
            metric,
            seq,
        )
    if system is not None and system != UCUM_SYSTEM:
        return Fault(
            ReasonCode.UNIT_MISMATCH,
            f"{metric}: valueQuantity.system must be {UCUM_SYSTEM}",
            f"{where}.valueQuantity.system",
            metric,
            seq,
        )
    if not isinstance(unit, str):
        return Fault(
            ReasonCode.UNIT_MISMATCH,
            f"{metric}: valueQuantity.code is required: the "
            f"UCUM unit, e.g. {METRICS[metric].unit!r}",
            f"{where}.valueQuantity.code",
            metric,
            seq,
        )
    item = {"seq": seq, "metric": metric, "value": value, "unit": unit, "at": at}
    return Draft(metric, item, where)


def _panel(
    resource: dict[str, Any], seq: int, at: str, where: str
) -> tuple[tuple[Draft, ...], tuple[Fault, ...], tuple[Issue, ...]]:
    """A blood-pressure panel's readings: systolic (seq), diastolic (seq + 1)."""
    drafts: list[Draft] = []
    faults: list[Fault] = []
    notes: list[Issue] = []
    seen: set[str] = set()
    components = resource.get("component")
    for k, component in enumerate(components if isinstance(components, list) else []):
        path = f"{where}.component[{k}]"
        metric = _concept(component.get("code"), f"{path}.code")
        if isinstance(metric, Fault):
            faults.append(metric)
            continue
        if metric not in (SYSTOLIC, DIASTOLIC) or metric in seen:
            why = "twice" if metric in seen else "in a blood-pressure panel"
            faults.append(
                Fault(
                    ReasonCode.SCHEMA_VIOLATION,
                    f"{metric} {why}: a panel has one systolic and one diastolic component",
                    path,
                    metric,
                )
            )
            continue
        seen.add(metric)
        if "dataAbsentReason" in component:
            notes.append(
                Issue(
                    "information",
                    "informational",
                    f"{metric} is absent (dataAbsentReason): no reading",
                    (path,),
                )
            )
            continue
        component_seq = seq if metric == SYSTOLIC else seq + 1
        if component_seq > MAX_SEQ:
            faults.append(
                Fault(
                    ReasonCode.SCHEMA_VIOLATION,
                    f"seq {component_seq} of the diastolic reading exceeds {MAX_SEQ}",
                    path,
                    metric,
                )
            )
            continue
        draft = _reading(metric, component, component_seq, at, path)
        if isinstance(draft, Fault):
            faults.append(draft)
        else:
            drafts.append(draft)
    if not drafts and not faults:
        faults.append(
            Fault(
                ReasonCode.SCHEMA_VIOLATION,
                "a blood-pressure panel needs a "
                "systolic or diastolic component with a valueQuantity",
                f"{where}.component",
            )
        )
    if "valueQuantity" in resource:
        notes.append(
            Issue(
                "warning",
                "informational",
                "a blood-pressure panel's "
                "valueQuantity is ignored: its components are the readings",
                (f"{where}.valueQuantity",),
            )
        )
    return tuple(drafts), tuple(faults), tuple(notes)
