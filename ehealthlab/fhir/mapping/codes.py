"""Every URI and code the FHIR mapping writes, in one place, with where each comes from.

Two kinds of names live here: those others define (HL7, LOINC, IEEE 11073, HL7 Italia), copied
exactly as their publications spell them, and those the platform mints under FHIR_BASE. The
model mapping (r4b.py) and the fast serialiser (fast.py) both read this module, so the two
cannot disagree on a system or a display. docs/fhir.md cites the source of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import NamedTuple

from ehealthlab.contract.catalogue import (
    BLOOD_PRESSURE_PANEL,
    DEVICE_TYPES,
    LOINC_SYSTEM,
    MDC_SYSTEM,
    METRICS,
    UCUM_SYSTEM,
    MdcCode,
)

__all__ = ["LOINC_SYSTEM", "MDC_SYSTEM", "UCUM_SYSTEM"]

# -- the platform's own names ----------------------------------------------------------------

#: base of every identifier system, code system and extension the platform defines. A
#: canonical URL names, it need not resolve; it must never change once data has left the
#: platform, because clients store identifiers with their systems.
FHIR_BASE = "https://ehealthlab.cittametropolitana.torino.it/fhir"

#: Patient.identifier: the provider-scoped keyed hash of the patient's identifier (hex)
PATIENT_PSEUDONYM_SYSTEM = f"{FHIR_BASE}/sid/patient-pseudonym"
#: Device.identifier: the device_id the gateway issued (also the Device's id)
DEVICE_ID_SYSTEM = f"{FHIR_BASE}/sid/device-id"
#: Device.type: the catalogue's device types (contract/catalogue.py DEVICE_TYPES)
DEVICE_TYPE_SYSTEM = f"{FHIR_BASE}/CodeSystem/device-type"
#: Organization.type: startup | provider | operator (organisations.kind)
ORGANISATION_KIND_SYSTEM = f"{FHIR_BASE}/CodeSystem/organisation-kind"
#: the SNAI (Strategia Nazionale Aree Interne) class of a municipality, A to F
SNAI_CLASS_SYSTEM = f"{FHIR_BASE}/CodeSystem/snai-class"
#: Observation extension (valueDateTime): the time the device's own clock gave a reading
#: whose effectiveDateTime was corrected for a wrong device clock
DEVICE_CLOCK_TIME_EXTENSION = f"{FHIR_BASE}/StructureDefinition/device-clock-time"
#: Location extension (valueCoding from SNAI_CLASS_SYSTEM)
SNAI_CLASS_EXTENSION = f"{FHIR_BASE}/StructureDefinition/snai-class"

# -- HL7 and terminology.hl7.org ---------------------------------------------------------------

#: identifier values that are URIs themselves (urn:uuid:...)
URI_SYSTEM = "urn:ietf:rfc:3986"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ORGANIZATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/organization-type"
LOCATION_PHYSICAL_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/location-physical-type"
#: security labels; PSEUDED = "pseudonymized"
V3_OBSERVATION_VALUE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
#: the extension that codes a string part of an Address (HL7 Italia's city → ISTAT code)
SC_CODING_EXTENSION = "http://hl7.org/fhir/StructureDefinition/iso21090-SC-coding"

VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"

# -- HL7 Italia (base IG hl7.fhir.it.base, canonical http://hl7.it/fhir) -----------------------

#: ISTAT codes of administrative units (comuni): the code system of the value set
#: http://terminology.hl7.it/ValueSet/istat-comune that Address-it-base binds city to
ISTAT_MUNICIPALITY_SYSTEM = (
    "http://terminology.hl7.it/CodeSystem/istat-unitaAmministrativeTerritoriali"
)
#: identifier of an Azienda Sanitaria Locale: FLS 11 code, 6 digits (region + ASL)
ASL_FLS_SYSTEM = "http://hl7.it/sid/fls"
#: Organization.type of an Italian health entity; code "asl"
IT_ENTITY_TYPE_SYSTEM = "http://terminology.hl7.it/CodeSystem/it-tipoEntita"


class Code(NamedTuple):
    """One Coding's system, code and display: the shape both serialisers build from."""

    system: str
    code: str
    display: str


# -- Observation -------------------------------------------------------------------------------

VITAL_SIGNS_CATEGORY = Code(OBSERVATION_CATEGORY_SYSTEM, "vital-signs", "Vital Signs")
LABORATORY_CATEGORY = Code(OBSERVATION_CATEGORY_SYSTEM, "laboratory", "Laboratory")
ACTIVITY_CATEGORY = Code(OBSERVATION_CATEGORY_SYSTEM, "activity", "Activity")

#: category of the metrics whose LOINC code is not in R4's vital-signs value set
_OTHER_CATEGORIES: Mapping[str, Code] = MappingProxyType(
    {"blood_glucose": LABORATORY_CATEGORY, "steps": ACTIVITY_CATEGORY}
)

#: the R4 profile each vital sign claims besides the base vital-signs profile
VITAL_SIGN_PROFILES: Mapping[str, str] = MappingProxyType(
    {
        "blood_pressure": "http://hl7.org/fhir/StructureDefinition/bp",
        "heart_rate": "http://hl7.org/fhir/StructureDefinition/heartrate",
        "spo2": "http://hl7.org/fhir/StructureDefinition/oxygensat",
        "respiratory_rate": "http://hl7.org/fhir/StructureDefinition/resprate",
        "body_weight": "http://hl7.org/fhir/StructureDefinition/bodyweight",
        "body_temperature": "http://hl7.org/fhir/StructureDefinition/bodytemp",
    }
)

#: the code of the blood-pressure panel Observation (systolic and diastolic are components)
BLOOD_PRESSURE = "blood_pressure"
BLOOD_PRESSURE_TEXT = "Blood pressure"
#: IEEE 11073 compound parent of the cuff's systolic/diastolic/mean (HL7 PHD IG example
#: compound-numeric-blood-pressure.json; docs/code-verification.md)
MDC_BLOOD_PRESSURE_COMPOUND = Code(MDC_SYSTEM, "150020", "MDC_PRESS_BLD_NONINV")
SYSTOLIC, DIASTOLIC = "bp_systolic", "bp_diastolic"

#: a panel component whose reading never arrived
UNKNOWN_ABSENT_REASON = Code(DATA_ABSENT_REASON_SYSTEM, "unknown", "Unknown")

#: where a metric has several MDC terms (heart rate: by sensor), the one each device type
#: measures with; device types not listed send the LOINC code alone
_MDC_TERM_BY_DEVICE_TYPE: Mapping[tuple[str, str], int] = MappingProxyType(
    {
        ("heart_rate", "blood_pressure_monitor"): 149546,  # MDC_PULS_RATE_NON_INV
        ("heart_rate", "pulse_oximeter"): 149530,  # MDC_PULS_OXIM_PULS_RATE
    }
)


def observation_category(metric_code: str) -> Code:
    """vital-signs for metrics in R4's vital-signs value set, else laboratory or activity."""
    if metric_code == BLOOD_PRESSURE or METRICS[metric_code].loinc[0].in_r4_vital_signs:
        return VITAL_SIGNS_CATEGORY
    return _OTHER_CATEGORIES[metric_code]


def mdc_term(metric_code: str, device_type: str) -> MdcCode | None:
    """The IEEE 11073 term for a metric as this kind of device measures it, if one is known."""
    terms = METRICS[metric_code].mdc
    if len(terms) == 1:
        return terms[0]
    wanted = _MDC_TERM_BY_DEVICE_TYPE.get((metric_code, device_type))
    return next((term for term in terms if term.code == wanted), None)


def mdc_code(term: MdcCode) -> Code:
    """An MDC term as a Coding: the 32-bit code in decimal, the reference id as display
    (as the HL7 PHD IG writes them)."""
    return Code(MDC_SYSTEM, str(term.code), term.reference_id)


@cache
def metric_codes(metric_code: str, device_type: str) -> tuple[Code, ...]:
    """Observation.code (or component.code) codings: LOINC first (the vital-signs profiles
    slice on it), every catalogue LOINC code, then the MDC term if one fits."""
    entry = METRICS[metric_code]
    codes = [Code(LOINC_SYSTEM, loinc.code, loinc.display) for loinc in entry.loinc]
    term = mdc_term(metric_code, device_type)
    if term is not None:
        codes.append(mdc_code(term))
    return tuple(codes)


BLOOD_PRESSURE_CODES = (
    Code(LOINC_SYSTEM, BLOOD_PRESSURE_PANEL.code, BLOOD_PRESSURE_PANEL.display),
    MDC_BLOOD_PRESSURE_COMPOUND,
)


def observation_profiles(code: str, attributed: bool) -> tuple[str, ...]:
    """meta.profile of an Observation: claimed only when it conforms, i.e. a vital sign with
    a subject (the vital-signs profiles require Observation.subject)."""
    specific = VITAL_SIGN_PROFILES.get(code)
    if not attributed or specific is None:
        return ()
    return (VITAL_SIGNS_PROFILE, specific)


# -- Device ------------------------------------------------------------------------------------

#: Device.version.type of the firmware revision (HL7 PHD IG Device examples)
MDC_FIRMWARE_REVISION = Code(MDC_SYSTEM, "531976", "MDC_ID_PROD_SPEC_FW")
FIRMWARE_REVISION_TEXT = "Firmware revision"


def device_type_codes(device_type: str) -> tuple[Code, ...]:
    """Device.type codings: the IEEE 11073 device specialization when one fits, then ours."""
    entry = DEVICE_TYPES[device_type]
    ours = Code(DEVICE_TYPE_SYSTEM, entry.code, entry.display)
    if entry.mdc_specialization is None:
        return (ours,)
    return (mdc_code(entry.mdc_specialization), ours)


# -- Patient -----------------------------------------------------------------------------------

PSEUDONYMIZED = Code(V3_OBSERVATION_VALUE_SYSTEM, "PSEUDED", "pseudonymized")

# -- Organization ------------------------------------------------------------------------------

#: organisations.kind → (HL7 organization-type, ours)
ORGANISATION_TYPES: Mapping[str, tuple[Code, Code]] = MappingProxyType(
    {
        "startup": (
            Code(ORGANIZATION_TYPE_SYSTEM, "bus", "Non-Healthcare Business or Corporation"),
            Code(ORGANISATION_KIND_SYSTEM, "startup", "Start-up"),
        ),
        "provider": (
            Code(ORGANIZATION_TYPE_SYSTEM, "prov", "Healthcare Provider"),
            Code(ORGANISATION_KIND_SYSTEM, "provider", "Health provider"),
        ),
        "operator": (
            Code(ORGANIZATION_TYPE_SYSTEM, "govt", "Government"),
            Code(ORGANISATION_KIND_SYSTEM, "operator", "Operator"),
        ),
    }
)
#: HL7 Italia's type of an organisation identified by an FLS 11 code
AZIENDA_SANITARIA_LOCALE = Code(IT_ENTITY_TYPE_SYSTEM, "asl", "Azienda Sanitaria Locale")

# -- Location ----------------------------------------------------------------------------------

JURISDICTION = Code(LOCATION_PHYSICAL_TYPE_SYSTEM, "jdn", "Jurisdiction")
#: Address.country of every municipality in the pilot (ISO 3166 alpha-2)
ITALY = "IT"

# -- published figures: SUS responses, Measures and MeasureReports -----------------------------

#: meta.tag of a SUS response or MeasureReport: the population it belongs to (indicators.md,
#: "Populations never mix"): real or simulated
POPULATION_SYSTEM = f"{FHIR_BASE}/CodeSystem/population"
POPULATION_CODES: Mapping[str, Code] = MappingProxyType(
    {
        "real": Code(POPULATION_SYSTEM, "real", "Real data"),
        "simulated": Code(POPULATION_SYSTEM, "simulated", "Simulated data"),
    }
)
#: meta.security of simulated data: HL7's label for test health data
TEST_HEALTH_DATA = Code("http://terminology.hl7.org/CodeSystem/v3-ActReason", "HTEST",
                        "test health data")  # fmt: skip
