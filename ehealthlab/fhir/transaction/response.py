"""The transaction-response (or batch-response) Bundle that says what became of each entry of
a transaction Bundle: its HTTP status, the location of the Observation stored, and an
OperationOutcome naming every rejected reading with the device contract's reason code. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ehealthlab.contract.messages import ReasonCode
from ehealthlab.fhir.bulk.export import Issue, operation_outcome
from ehealthlab.fhir.mapping.codes import BLOOD_PRESSURE, DIASTOLIC, FHIR_BASE, SYSTOLIC
from ehealthlab.fhir.mapping.fast import Json
from ehealthlab.fhir.mapping.ids import observation_id
from ehealthlab.fhir.transaction.plan import BundlePlan, EntryPlan, Refusal

#: OperationOutcome.issue.details coding: the device contract's reason codes
REJECTION_REASON_SYSTEM = f"{FHIR_BASE}/CodeSystem/rejection-reason"

Verdict = Literal["created", "duplicate", "again", "rejected"]


@dataclass(frozen=True, slots=True)
class ReadingResult:
    """What ingest made of one reading of an entry."""

    metric: str | None
    verdict: Verdict
    #: the reading's time as validated (for the Observation's location)
    at: datetime | None = None
    reason: str | None = None
    detail: str | None = None
    expression: str | None = None


@dataclass
class EntryResult:
    """The readings of one entry, as ingest judged and stored them."""

    readings: list[ReadingResult] = field(default_factory=list)


_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    422: "422 Unprocessable Entity",
}
#: the OperationOutcome issue type of each reason code
_ISSUE_TYPES: dict[str, str] = {
    ReasonCode.MALFORMED_JSON: "structure",
    ReasonCode.SCHEMA_VIOLATION: "invalid",
    ReasonCode.PAYLOAD_TOO_LARGE: "too-costly",
    ReasonCode.UNKNOWN_METRIC: "code-invalid",
    ReasonCode.METRIC_NOT_FOR_DEVICE_TYPE: "business-rule",
    ReasonCode.UNIT_MISMATCH: "value",
    ReasonCode.OUT_OF_RANGE: "value",
    ReasonCode.TIMESTAMP_IN_FUTURE: "business-rule",
    ReasonCode.CONFLICTING_DUPLICATE: "conflict",
}


def not_your_device(entry: EntryPlan) -> Refusal:
    """The refusal of an entry whose device is not one of the caller's active devices."""
    return Refusal(
        404,
        "not-found",
        f"Device/{entry.device_id} is not one of your active devices",
        f"{entry.where}.resource.device",
    )


def response_bundle(
    plan: BundlePlan, results: Mapping[int, EntryResult], refusals: Mapping[int, Refusal]
) -> Json:
    """The transaction-response (or batch-response) Bundle: one entry per request entry, in
    order, each with its HTTP status, the Observation's location when a reading of it is
    stored, and an OperationOutcome naming every rejected reading with its reason code."""
    return {
        "resourceType": "Bundle",
        "type": f"{plan.type}-response",
        "entry": [
            {"response": _entry_response(entry, results.get(entry.index), refusals)}
            for entry in plan.entries
        ],
    }


def _entry_response(
    entry: EntryPlan, result: EntryResult | None, refusals: Mapping[int, Refusal]
) -> Json:
    refusal = entry.refusal or refusals.get(entry.index)
    if refusal is not None:
        issue = Issue("error", refusal.code, refusal.diagnostics, (refusal.expression,))
        return {"status": _STATUS_TEXT[refusal.status], "outcome": operation_outcome(issue)}
    readings = result.readings if result is not None else []
    # every reading stored anew needs no word, unless others of the entry were not
    mixed = any(r.verdict != "created" for r in readings)
    issues = [_issue(r, entry) for r in readings if mixed or r.verdict != "created"]
    issues.extend(entry.notes)
    issues.sort(key=lambda issue: _SEVERITY_ORDER[issue.severity])
    rejected = [r for r in readings if r.verdict == "rejected"]
    kept = [r for r in readings if r.verdict != "rejected"]
    if rejected:
        conflicts = all(r.reason == ReasonCode.CONFLICTING_DUPLICATE for r in rejected)
        status = 409 if conflicts else 422
    elif any(r.verdict == "created" for r in readings):
        status = 201
    else:
        status = 200
    response: Json = {"status": _STATUS_TEXT[status]}
    locations = [location for r in kept if (location := _location(entry, r)) is not None]
    if locations:
        response["location"] = locations[0]
    if issues:
        response["outcome"] = operation_outcome(*issues)
    return response


def _location(entry: EntryPlan, reading: ReadingResult) -> str | None:
    """Observation/{id} of a stored reading (its panel's id for blood pressure)."""
    if entry.device_id is None or reading.metric is None or reading.at is None:
        return None
    code = BLOOD_PRESSURE if reading.metric in (SYSTOLIC, DIASTOLIC) else reading.metric
    return f"Observation/{observation_id(entry.device_id, code, reading.at)}"


_SEVERITY_ORDER = {"fatal": 0, "error": 1, "warning": 2, "information": 3}
_KEPT_TEXT = {
    "created": "stored",
    "duplicate": "already stored with the same value: counted as a duplicate, not stored twice",
    "again": "this Bundle (same identifier and content) was delivered before: nothing is "
    "stored again",
}


def _issue(reading: ReadingResult, entry: EntryPlan) -> Issue:
    expression = (reading.expression or f"{entry.where}.resource",)
    name = reading.metric or "the reading"
    if reading.verdict == "rejected":
        reason = reading.reason or ReasonCode.SCHEMA_VIOLATION
        issue_type = _ISSUE_TYPES.get(reason, "processing")
        return Issue(
            "error",
            issue_type,
            reading.detail or reason,
            expression,
            (REJECTION_REASON_SYSTEM, reason),
        )
    code = "duplicate" if reading.verdict != "created" else "informational"
    return Issue("information", code, f"{name}: {_KEPT_TEXT[reading.verdict]}", expression)
