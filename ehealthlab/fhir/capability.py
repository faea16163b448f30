"""The CapabilityStatement of /fhir: only what the server really does.

Search parameters come from PARAMETERS (search/parameters.py), the table the parser itself
uses, so a parameter is declared exactly when it is understood; a test walks the statement and
calls every interaction, parameter and operation it declares. Parts of /fhir built elsewhere
add themselves here with one line each (see "Hooks").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehealthlab import __version__
from ehealthlab.fhir.access import SCOPES
from ehealthlab.fhir.mapping.codes import VITAL_SIGN_PROFILES, VITAL_SIGNS_PROFILE
from ehealthlab.fhir.search.parameters import PARAMETERS, SORTS
from ehealthlab.fhir.search.query import DEFAULT_COUNT, MAX_COUNT
from ehealthlab.fhir.search.sql import TOTAL_CAP

Json = dict[str, Any]

FHIR_VERSION = "4.0.1"
#: when this statement last changed (CapabilityStatement.date)
STATEMENT_DATE = "2026-11-30"


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation the server performs (CapabilityStatement ...operation)."""

    name: str
    definition: str
    documentation: str = ""


@dataclass(frozen=True, slots=True)
class OtherResource:
    """A resource type served by another part of /fhir (not read or searched here)."""

    type: str
    interactions: tuple[str, ...] = ()
    operations: tuple[Operation, ...] = ()


LASTN = Operation(
    "lastn",
    "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
    "GET Observation/$lastn?patient=...&max=N: the N most recent Observations of each code, "
    "with any Observation search parameter (category, code, date); needs patient, subject "
    "or device",
)
BULK_EXPORT = Operation(
    "export",
    "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    "FHIR Bulk Data system export",
)
SUS_QUESTIONNAIRE = OtherResource("Questionnaire", interactions=("read",))
GROUP_EXPORT = OtherResource(
    "Group",
    interactions=("read",),
    operations=(
        Operation(
            "export",
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
            "FHIR Bulk Data export of a provider's patients",
        ),
    ),
)

# -- Hooks: add what works, one line each ----------------------------------------------------
PATIENT_EXPORT = Operation(
    "export",
    "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
    "FHIR Bulk Data export of the patients a provider may see",
)
#: whole-system interactions (POST /fhir: ehealthlab/fhir/transaction/routes.py)
SYSTEM_INTERACTIONS: tuple[str, ...] = ("transaction", "batch")
#: whole-system operations (GET /fhir/$export)
SYSTEM_OPERATIONS: tuple[Operation, ...] = (BULK_EXPORT,)
#: resource types served elsewhere (Group/[id]/$export) or only read (Questionnaire/sus)
OTHER_RESOURCES: tuple[OtherResource, ...] = (SUS_QUESTIONNAIRE, GROUP_EXPORT)
#: interactions of a resource type searched here besides read and search-type
TYPE_INTERACTIONS: dict[str, tuple[str, ...]] = {"QuestionnaireResponse": ("create",)}
#: canonical CapabilityStatements this server instantiates
INSTANTIATES: tuple[str, ...] = ("http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",)
#: operations on a resource type searched here
TYPE_OPERATIONS: dict[str, tuple[Operation, ...]] = {
    "Observation": (LASTN,),
    "Patient": (PATIENT_EXPORT,),
}

_PROFILES = {
    "Observation": "http://hl7.org/fhir/StructureDefinition/Observation",
    "Patient": "http://hl7.org/fhir/StructureDefinition/Patient",
    "Device": "http://hl7.org/fhir/StructureDefinition/Device",
    "Location": "http://hl7.org/fhir/StructureDefinition/Location",
    "Organization": "http://hl7.org/fhir/StructureDefinition/Organization",
    "AuditEvent": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
    "QuestionnaireResponse": "http://hl7.org/fhir/StructureDefinition/QuestionnaireResponse",
    "Measure": "http://hl7.org/fhir/StructureDefinition/Measure",
    "MeasureReport": "http://hl7.org/fhir/StructureDefinition/MeasureReport",
}
_SUPPORTED_PROFILES = {
    "Observation": [VITAL_SIGNS_PROFILE, *VITAL_SIGN_PROFILES.values()],
}
_RESOURCE_DOCUMENTATION = {
    "Observation": "Readings; the systolic and diastolic readings of one measurement are one "
    "blood-pressure panel (85354-9). Providers see their patients', start-ups their devices' "
    "(unassigned readings included), the operator all.",
    "Patient": "Pseudonymous: an identifier (keyed hash), no name. Providers and the operator.",
    "Device": "A start-up's devices; a provider sees those enrolled with its patients.",
    "Location": "The municipalities of the Metropolitan City of Turin, by ISTAT code.",
    "Organization": "Start-ups, providers and the operator; each caller sees itself and the "
    "organisations its resources refer to.",
    "AuditEvent": "Every read and search of patient data. The operator only.",
    "QuestionnaireResponse": "System Usability Scale responses, against the SUS "
    "Questionnaire (GET Questionnaire/sus). Created (POST) by a provider about its own "
    "patients, or by the operator; read by the provider of the patient and the operator. "
    "Responses imported without a patient have a Location (municipality) as subject.",
    "Measure": "The pilot's indicators (indicators.md v1.1), one Measure each, and the "
    "composite pilot-indicators whose groups are the indicators. Every token.",
    "MeasureReport": "One summary report per group and period of the current evaluations, "
    "for Measure pilot-indicators: a group per indicator, means with their 95% interval "
    "(quantity-confidenceInterval), the population in meta.tag. A group with fewer patients "
    "than the evaluation's min_group_patients shows only that band (< 5); its other scores "
    "are data-absent-reason masked. Published figures: every token. Subjects: Location (a "
    "municipality) or Group/[id] (read: all, snai-class-X, area-inner|centre, "
    "startup-[id], device-type-[type], mini-pilot-[id]).",
}

_HANDLING = (
    "Search handling is lenient by default: an unknown parameter is ignored and left out of "
    "the Bundle's self link. Send `Prefer: handling=strict` to have it refused (400). A known "
    "parameter with a malformed value, an unsupported modifier or prefix is always a 400 "
    f"OperationOutcome. Paging: `_count` (default {DEFAULT_COUNT}, at most {MAX_COUNT}; 0 or "
    "`_summary=count` answers the total only), and the Bundle's next/previous links carry an "
    "opaque `_cursor` bound to the search and the caller. `total` is counted up to "
    f"{TOTAL_CAP:,} matches and left out beyond (a patient's year of readings costs more to "
    "count than to page through), unless `_total=accurate`; `_total=none` skips counting. "
    "Searches may also be POSTed to [type]/_search as a form. "
    "Sorting: "
    + "; ".join(f"{t} `_sort={' | '.join(s)}`" for t, s in SORTS.items())
    + " (the first is the default). Only JSON: `_format` may ask for json or "
    "application/fhir+json."
)


def _security() -> Json:
    scopes = "; ".join(f"{kind}: {' '.join(scopes)}" for kind, scopes in SCOPES.items())
    return {
        "cors": False,
        "description": "Send `Authorization: Bearer ehl_...`, an API token of the gateway (the "
        "same as for /api/v1). Scopes in SMART style, by kind of organisation: "
        f"{scopes}. Another organisation's resources are answered 404, like missing ones. "
        "Every read or search of patient data is recorded as an AuditEvent.",
    }


def _resource(resource_type: str) -> Json:
    resource: Json = {"type": resource_type, "profile": _PROFILES[resource_type]}
    if resource_type in _SUPPORTED_PROFILES:
        resource["supportedProfile"] = list(_SUPPORTED_PROFILES[resource_type])
    resource["documentation"] = _RESOURCE_DOCUMENTATION[resource_type]
    codes = ("read", "search-type", *TYPE_INTERACTIONS.get(resource_type, ()))
    resource["interaction"] = [{"code": code} for code in codes]
    resource["versioning"] = "no-version"
    resource["readHistory"] = False
    resource["updateCreate"] = False
    resource["searchParam"] = [
        {
            "name": parameter.name,
            "definition": parameter.definition,
            "type": parameter.type,
            "documentation": parameter.documentation,
        }
        for parameter in PARAMETERS[resource_type]
    ]
    operations = TYPE_OPERATIONS.get(resource_type, ())
    if operations:
        resource["operation"] = [_operation(operation) for operation in operations]
    return resource


def _operation(operation: Operation) -> Json:
    entry: Json = {"name": operation.name, "definition": operation.definition}
    if operation.documentation:
        entry["documentation"] = operation.documentation
    return entry


def _other(resource: OtherResource) -> Json:
    entry: Json = {"type": resource.type}
    if resource.interactions:
        entry["interaction"] = [{"code": code} for code in resource.interactions]
    if resource.operations:
        entry["operation"] = [_operation(operation) for operation in resource.operations]
    return entry


def capability_statement(base_url: str) -> Json:
    """The statement for a server answering at `base_url` (e.g. https://host/fhir)."""
    rest: Json = {
        "mode": "server",
        "documentation": _HANDLING,
        "security": _security(),
        "resource": [_resource(t) for t in PARAMETERS] + [_other(r) for r in OTHER_RESOURCES],
    }
    if SYSTEM_INTERACTIONS:
        rest["interaction"] = [{"code": code} for code in SYSTEM_INTERACTIONS]
    if SYSTEM_OPERATIONS:
        rest["operation"] = [_operation(operation) for operation in SYSTEM_OPERATIONS]
    statement: Json = {
        "resourceType": "CapabilityStatement",
        "id": "ehealthlab",
        "name": "EhealthlabFhirServer",
        "title": "E-health Territorial LAB FHIR API",
        "status": "active",
        "date": STATEMENT_DATE,
        "publisher": "Città Metropolitana di Torino",
        "description": "Telemonitoring readings, pseudonymous patients, devices, organisations "
        "and municipalities of the E-health Territorial LAB as FHIR R4, with the System "
        "Usability Scale responses of its users and the pilot's indicators.",
        "kind": "instance",
    }
    if INSTANTIATES:
        statement["instantiates"] = list(INSTANTIATES)
    statement["software"] = {"name": "ehealthlab", "version": __version__}
    statement["implementation"] = {"description": "ehealthlab FHIR API", "url": base_url}
    statement["fhirVersion"] = FHIR_VERSION
    statement["format"] = ["application/fhir+json", "json"]
    statement["rest"] = [rest]
    return statement
