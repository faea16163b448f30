"""The search parameters the API serves, per resource type, and the sorts each type accepts.

Every parameter is declared once, in PARAMETERS: its type, the SearchParameter it implements,
its documentation and how a value is parsed (values.py). The parser (query.py) knows exactly
these, and the CapabilityStatement is built from the same table, so it cannot claim a
parameter the parser does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ehealthlab.fhir.mapping.codes import ASL_FLS_SYSTEM as FLS_SYSTEM
from ehealthlab.fhir.mapping.codes import (
    DEVICE_ID_SYSTEM,
    ISTAT_MUNICIPALITY_SYSTEM,
    PATIENT_PSEUDONYM_SYSTEM,
    POPULATION_SYSTEM,
    URI_SYSTEM,
)
from ehealthlab.fhir.measures.definitions import COMPOSITE_URL, MEASURE_URLS
from ehealthlab.fhir.questionnaires.sus import SUS_ID, SUS_URL
from ehealthlab.fhir.search.values import (
    CATEGORIES,
    COMPONENT_CODES,
    MAIN_CODES,
    Parser,
    canonical,
    canonical_url,
    coded,
    date_range,
    device_status,
    device_types,
    entity,
    fixed_token,
    identifier,
    observation_key,
    organisation_type,
    string_match,
    text_id,
    text_reference,
    typed_reference,
    urn_uuid,
    uuid_id,
    uuid_reference,
)

ParamType = Literal["token", "reference", "date", "string", "number", "uri"]


@dataclass(frozen=True, slots=True)
class SearchParameter:
    """A parameter the API serves: what the CapabilityStatement declares about it, and how
    one of its (comma-separated) values is parsed."""

    name: str
    type: ParamType
    #: canonical URL of the SearchParameter it implements
    definition: str
    documentation: str
    parse: Parser = field(repr=False, compare=False)
    #: modifiers accepted besides none (`missing`, `exact`, a type for references)
    modifiers: frozenset[str] = frozenset()

    @property
    def allows_missing(self) -> bool:
        return "missing" in self.modifiers


def _spec(name: str) -> str:
    return f"http://hl7.org/fhir/SearchParameter/{name}"


_ID_DOC = "the resource's id"

PARAMETERS: Mapping[str, tuple[SearchParameter, ...]] = MappingProxyType(
    {
        "Observation": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, observation_key),
            SearchParameter(
                "patient",
                "reference",
                _spec("clinical-patient"),
                "Patient/[id] or [id]; `patient:missing=true` finds readings no enrolment "
                "covers yet (unassigned)",
                uuid_reference("Patient"),
                frozenset({"missing", "Patient"}),
            ),
            SearchParameter(
                "subject",
                "reference",
                _spec("Observation-subject"),
                "as patient: subjects are always Patients",
                uuid_reference("Patient"),
                frozenset({"missing", "Patient"}),
            ),
            SearchParameter(
                "device",
                "reference",
                _spec("Observation-device"),
                "Device/[device_id] or [device_id]",
                text_reference("Device"),
                frozenset({"Device"}),
            ),
            SearchParameter(
                "code",
                "token",
                _spec("clinical-code"),
                "[system|]code of Observation.code, LOINC or IEEE 11073 MDC; also matches "
                "component codes, so 8480-6 and 8462-4 find blood-pressure panels (85354-9)",
                coded(MAIN_CODES, COMPONENT_CODES),
            ),
            SearchParameter(
                "component-code",
                "token",
                _spec("Observation-component-code"),
                "[system|]code of Observation.component.code (blood-pressure panels)",
                coded(COMPONENT_CODES),
            ),
            SearchParameter(
                "combo-code",
                "token",
                _spec("Observation-combo-code"),
                "[system|]code of Observation.code or Observation.component.code",
                coded(MAIN_CODES, COMPONENT_CODES),
            ),
            SearchParameter(
                "category",
                "token",
                _spec("Observation-category"),
                "vital-signs, laboratory or activity "
                "(http://terminology.hl7.org/CodeSystem/observation-category)",
                coded(CATEGORIES),
            ),
            SearchParameter(
                "date",
                "date",
                _spec("clinical-date"),
                "effectiveDateTime, with prefixes eq ne gt lt ge le sa eb; a value without "
                "a time zone is read in Europe/Rome, at its precision (2026-03-10: that day)",
                date_range,
            ),
            SearchParameter(
                "identifier",
                "token",
                _spec("clinical-identifier"),
                f"{URI_SYSTEM}|urn:uuid:... (evaluated within the other criteria: give a "
                "patient or device too on large stores)",
                identifier(URI_SYSTEM, urn_uuid),
            ),
        ),
        "Patient": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, uuid_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Patient-identifier"),
                f"{PATIENT_PSEUDONYM_SYSTEM}|[pseudonym, hex]",
                identifier(PATIENT_PSEUDONYM_SYSTEM, bytes.fromhex),
            ),
            SearchParameter(
                "organization",
                "reference",
                _spec("Patient-organization"),
                "the managing provider: Organization/[id]",
                uuid_reference("Organization"),
                frozenset({"Organization"}),
            ),
        ),
        "Device": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, text_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Device-identifier"),
                f"{DEVICE_ID_SYSTEM}|[device_id]",
                identifier(DEVICE_ID_SYSTEM),
            ),
            SearchParameter(
                "type",
                "token",
                _spec("Device-type"),
                "the catalogue's device type or its IEEE 11073 specialization",
                device_types,
            ),
            SearchParameter(
                "organization",
                "reference",
                _spec("Device-organization"),
                "the owning start-up: Organization/[id]",
                uuid_reference("Organization"),
                frozenset({"Organization"}),
            ),
            SearchParameter(
                "status", "token", _spec("Device-status"), "active or inactive", device_status
            ),
        ),
        "Location": (
            SearchParameter("_id", "token", _spec("Resource-id"), "the ISTAT code", text_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Location-identifier"),
                f"{ISTAT_MUNICIPALITY_SYSTEM}|[ISTAT code]",
                identifier(ISTAT_MUNICIPALITY_SYSTEM),
            ),
            SearchParameter(
                "name",
                "string",
                _spec("Location-name"),
                "the municipality's name: starts with, ignoring case and accents; "
                ":exact and :contains",
                string_match,
                frozenset({"exact", "contains"}),
            ),
        ),
        "Organization": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, uuid_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Organization-identifier"),
                f"{FLS_SYSTEM}|[FLS 11 code] of an Azienda Sanitaria Locale",
                identifier(FLS_SYSTEM),
            ),
            SearchParameter(
                "name",
                "string",
                _spec("Organization-name"),
                "starts with, ignoring case and accents; :exact and :contains",
                string_match,
                frozenset({"exact", "contains"}),
            ),
            SearchParameter(
                "type",
                "token",
                _spec("Organization-type"),
                "HL7 organization-type (bus, prov, govt), ours (startup, provider, "
                "operator) or it-tipoEntita asl",
                organisation_type,
            ),
        ),
        "AuditEvent": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, uuid_id),
            SearchParameter(
                "date",
                "date",
                _spec("AuditEvent-date"),
                "when recorded; prefixes as Observation's date",
                date_range,
            ),
            SearchParameter(
                "agent",
                "reference",
                _spec("AuditEvent-agent"),
                "the calling organisation: Organization/[id]",
                uuid_reference("Organization"),
                frozenset({"Organization"}),
            ),
            SearchParameter(
                "entity",
                "reference",
                _spec("AuditEvent-entity"),
                "what was read: Type/[id] (a search names the patients whose data it returned)",
                entity,
            ),
            SearchParameter(
                "patient",
                "reference",
                _spec("AuditEvent-patient"),
                "a patient whose data was read or searched",
                uuid_reference("Patient"),
                frozenset({"Patient"}),
            ),
            SearchParameter(
                "outcome",
                "token",
                _spec("AuditEvent-outcome"),
                "0 success, 4 refused or not found, 8 server failure",
                fixed_token("http://hl7.org/fhir/audit-event-outcome", ("0", "4", "8", "12")),
            ),
            SearchParameter(
                "subtype",
                "token",
                _spec("AuditEvent-subtype"),
                "read, search-type or operation (http://hl7.org/fhir/restful-interaction)",
                fixed_token(
                    "http://hl7.org/fhir/restful-interaction",
                    ("read", "search-type", "operation"),
                ),
            ),
            SearchParameter(
                "action",
                "token",
                _spec("AuditEvent-action"),
                "R (read) or E (search, operation)",
                fixed_token("http://hl7.org/fhir/audit-event-action", ("R", "E")),
            ),
        ),
        "QuestionnaireResponse": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, uuid_id),
            SearchParameter(
                "patient",
                "reference",
                _spec("QuestionnaireResponse-patient"),
                "Patient/[id] or [id]: the patient the response is about",
                uuid_reference("Patient"),
                frozenset({"Patient"}),
            ),
            SearchParameter(
                "subject",
                "reference",
                _spec("QuestionnaireResponse-subject"),
                "Patient/[id], or Location/[ISTAT code] for responses about no patient",
                typed_reference("Patient", "Location"),
                frozenset({"Patient", "Location"}),
            ),
            SearchParameter(
                "authored",
                "date",
                _spec("QuestionnaireResponse-authored"),
                "the day it was answered (its start, Europe/Rome); prefixes as Observation's date",
                date_range,
            ),
            SearchParameter(
                "questionnaire",
                "reference",
                _spec("QuestionnaireResponse-questionnaire"),
                f"the SUS Questionnaire: {SUS_URL} (or Questionnaire/{SUS_ID})",
                canonical(SUS_URL),
            ),
        ),
        "Measure": (
            SearchParameter(
                "_id",
                "token",
                _spec("Resource-id"),
                "pilot-indicators, or an indicator's id with - for _ (e.g. loss-rate)",
                text_id,
            ),
            SearchParameter(
                "url",
                "uri",
                _spec("Measure-url"),
                "the canonical URL ([url][|version]; Measure/[id] for this server's)",
                canonical_url,
            ),
        ),
        "MeasureReport": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, uuid_id),
            SearchParameter(
                "measure",
                "reference",
                _spec("MeasureReport-measure"),
                f"{COMPOSITE_URL} (every report), or an indicator's Measure: every report "
                "has a group for each indicator",
                canonical(*MEASURE_URLS),
            ),
            SearchParameter(
                "subject",
                "reference",
                _spec("MeasureReport-subject"),
                "Location/[ISTAT code] of a municipality, or Group/[id] (all, snai-class-A, "
                "area-inner, startup-[id], device-type-[type], mini-pilot-[id])",
                typed_reference("Location", "Group"),
                frozenset({"Location", "Group"}),
            ),
            SearchParameter(
                "period",
                "date",
                _spec("MeasureReport-period"),
                "the period's days (Europe/Rome) against the value's range: eq when the "
                "value contains the period (period=2026-01 finds January's); ge, le, gt, lt, "
                "sa, eb as FHIR defines them for periods",
                date_range,
            ),
            SearchParameter(
                "_tag",
                "token",
                _spec("Resource-tag"),
                f"the population: {POPULATION_SYSTEM}|real or |simulated",
                fixed_token(POPULATION_SYSTEM, ("real", "simulated")),
            ),
        ),
    }
)

#: _sort values each searchable type accepts; the first is the default
SORTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Observation": ("-date", "date"),
        "AuditEvent": ("-date", "date"),
        "Patient": ("_id",),
        "Device": ("_id",),
        "Location": ("_id",),
        "Organization": ("_id",),
        "QuestionnaireResponse": ("_id",),
        "Measure": ("_id",),
        "MeasureReport": ("_id",),
    }
)
