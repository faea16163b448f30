"""An Observation's code and quantity read as the device contract's reading items.

The code must be a LOINC or IEEE 11073 code of the catalogue, so the metric is the
catalogue's own; `valueQuantity` gives `value` and the UCUM `unit`, which ingest's
validation then judges as it judges any reading. What cannot become a reading item at all
(no value, no unit, an unknown code) is a Fault with the contract's reason code.

A blood-pressure panel (85354-9) gives two readings: systolic with the entry's seq, diastolic
with seq + 1, as the device contract's example numbers a cuff inflation's readings.
"""

from __future__ import annotations

from typing import Any

from ehealthlab.contract.catalogue import (
    BLOOD_PRESSURE_PANEL,
    LOINC_SYSTEM,
    MDC_SYSTEM,
    METRICS,
    UCUM_SYSTEM,
)
from ehealthlab.contract.messages import MAX_SEQ, ReasonCode
from ehealthlab.fhir.bulk.export import Issue
from ehealthlab.fhir.mapping.codes import (
    BLOOD_PRESSURE,
    DIASTOLIC,
    MDC_BLOOD_PRESSURE_COMPOUND,
    SYSTOLIC,
)
from ehealthlab.fhir.transaction.plan import Draft, Fault


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


def coded_metric(concept: object, where: str) -> str | Fault:
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


def reading_draft(
    metric: str, element: dict[str, Any], seq: int, at: str, where: str
) -> Draft | Fault:
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


def panel_drafts(
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
        metric = coded_metric(component.get("code"), f"{path}.code")
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
        draft = reading_draft(metric, component, component_seq, at, path)
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
