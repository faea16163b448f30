"""One entry of a FHIR transaction Bundle planned: refused, faulted or drafted.

An entry must POST an Observation of a device (`Observation.device` as Device/{device_id});
anything else is refused and nothing of it stored, as the broker refuses a publication on
another device's topic. The Observation must then be valid FHIR R4, final, timed
(`effectiveDateTime`) and carry the device's reading counter, the identifier
`{FHIR_BASE}/sid/reading-seq`; what fails is a fault, kept as a dead letter that keeps the
seq whenever it can be read. Its code and values become reading items in
observation_readings.py.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import orjson
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from ehealthlab.contract.messages import MAX_SEQ, ReasonCode
from ehealthlab.contract.topics import is_valid_device_id
from ehealthlab.fhir.bulk.export import Issue
from ehealthlab.fhir.mapping.codes import BLOOD_PRESSURE, FHIR_BASE
from ehealthlab.fhir.transaction.observation_readings import (
    coded_metric,
    panel_drafts,
    reading_draft,
)
from ehealthlab.fhir.transaction.plan import EntryPlan, Fault, Refusal

#: Observation.identifier system whose value is the device's reading counter (`seq`)
READING_SEQ_SYSTEM = f"{FHIR_BASE}/sid/reading-seq"
_DEVICE_REFERENCE = re.compile(r"(?:.*/)?Device/(?P<id>[^/]+)")
_FINAL = "final"


def shown(value: object) -> str:
    return repr(value) if isinstance(value, str) and len(value) <= 40 else "given"


def plan_entry(index: int, entry: object) -> EntryPlan:
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
            f"entry.request.method {shown(method)}: only "
            "POST (create) of an Observation is supported",
            f"{where}.request.method",
        )
    if url != "Observation":
        return Refusal(
            400,
            "not-supported",
            f"entry.request.url {shown(url)}: use 'Observation'",
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
    concept = coded_metric(resource.get("code"), f"{where}.code")
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
        drafts, faults, more = panel_drafts(resource, seq, at, where)
        return EntryPlan(index, device_id, raw, drafts, faults, notes=notes + more)
    draft = reading_draft(concept, resource, seq, at, where)
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
            f"Observation.status {shown(status)}: only "
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
