"""The FHIR JSON of r4b.py, built as plain dicts: for result sets too large for models.

Building and validating an R4B model costs far more than the resource's JSON (see
bench/fhir_mapping.py). Each function here returns exactly
`r4b.<same name>(record).model_dump(mode="json")`, keys in the same order, so
`dumps(...)` gives the bytes of `model_dump_json()`; tests/test_fhir_mapping_fast.py proves
it over generated rows. Sub-dicts that never vary (codes, categories) are shared between
results: treat what these functions return as read-only.

Observations are built for every row of every search, so that path avoids what it can: the
business identifier is hashed here rather than through uuid.UUID objects (equal to
ids.observation_identifier, which tests/test_fhir_perf_paths.py checks), UTC times are not
converted again, and the references to a patient, organisation or device are made once
(bounded caches) and shared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.fhir.mapping.codes import (
    ASL_FLS_SYSTEM,
    AZIENDA_SANITARIA_LOCALE,
    BLOOD_PRESSURE,
    BLOOD_PRESSURE_CODES,
    BLOOD_PRESSURE_TEXT,
    DEVICE_CLOCK_TIME_EXTENSION,
    DEVICE_ID_SYSTEM,
    DIASTOLIC,
    FHIR_BASE,
    FIRMWARE_REVISION_TEXT,
    ISTAT_MUNICIPALITY_SYSTEM,
    ITALY,
    JURISDICTION,
    MDC_FIRMWARE_REVISION,
    ORGANISATION_TYPES,
    PATIENT_PSEUDONYM_SYSTEM,
    PSEUDONYMIZED,
    SC_CODING_EXTENSION,
    SNAI_CLASS_EXTENSION,
    SNAI_CLASS_SYSTEM,
    SYSTOLIC,
    UCUM_SYSTEM,
    UNKNOWN_ABSENT_REASON,
    URI_SYSTEM,
    Code,
    device_type_codes,
    mdc_code,
    metric_codes,
    observation_category,
    observation_profiles,
)
from ehealthlab.fhir.mapping.ids import observation_id
from ehealthlab.fhir.mapping.rows import (
    BloodPressureReadings,
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
    ReadingRecord,
    as_utc,
    group_measurements,
)

Json = dict[str, Any]

#: fhir.resources keeps a decimal as the float's shortest text: from 1e16 on that text has an
#: exponent and no fraction, and is written as the JSON integer it spells (5.9e+16 → 59...0)
_INTEGRAL_FROM = 1e16


def dumps(resource: Json) -> bytes:
    """The resource's JSON bytes (compact, UTF-8), as `model_dump_json()` writes them."""
    return orjson.dumps(resource)


def observations_json(readings: Iterable[ReadingRecord]) -> list[Json]:
    """r4b.observations, as JSON dicts."""
    return [observation_json(source) for source in group_measurements(readings)]


def observation_json(source: ReadingRecord | BloodPressureReadings) -> Json:
    """r4b.observation, as a JSON dict."""
    if isinstance(source, BloodPressureReadings):
        return _blood_pressure(source)
    if source.metric == SYSTOLIC:
        return _blood_pressure(BloodPressureReadings(source, None))
    if source.metric == DIASTOLIC:
        return _blood_pressure(BloodPressureReadings(None, source))
    return _observation(
        source,
        source.metric,
        _metric_concept(source.metric, source.device_type),
        source,
        value=_quantity(source),
    )


def _blood_pressure(panel: BloodPressureReadings) -> Json:
    principal = panel.principal
    systolic, diastolic = panel
    # the later arrival (aware times compare as instants); systolic when they tie
    last = (
        diastolic
        if diastolic is not None
        and (systolic is None or as_utc(diastolic.received_at) > as_utc(systolic.received_at))
        else principal
    )
    device_type = principal.device_type
    return _observation(
        principal,
        BLOOD_PRESSURE,
        _blood_pressure_concept(),
        last,
        components=[
            _component(SYSTOLIC, panel.systolic, device_type),
            _component(DIASTOLIC, panel.diastolic, device_type),
        ],
    )


def _observation(
    reading: ReadingRecord,
    code: str,
    code_concept: Json,
    last_received: ReadingRecord,
    *,
    value: Json | None = None,
    components: list[Json] | None = None,
) -> Json:
    resource_id = observation_id(reading.device_id, code, reading.at)
    resource: Json = {"resourceType": "Observation", "id": resource_id}
    meta = _meta(code, reading.patient_id is not None)
    if meta is not None:
        resource["meta"] = meta
    if reading.clock_corrected:
        resource["extension"] = [
            {"url": DEVICE_CLOCK_TIME_EXTENSION, "valueDateTime": _instant(reading.at)}
        ]
    resource["identifier"] = [{"system": URI_SYSTEM, "value": _identifier(resource_id)}]
    resource["status"] = "final"
    resource["category"] = _category(code)
    resource["code"] = code_concept
    if reading.patient_id is not None:
        resource["subject"] = _patient_reference(reading.patient_id)
    resource["effectiveDateTime"] = _instant(reading.measured_at)
    resource["issued"] = _instant(last_received.received_at)
    if reading.provider_id is not None:
        resource["performer"] = _performer(reading.provider_id)
    if value is not None:
        resource["valueQuantity"] = value
    resource["device"] = _device_reference(reading.device_id)
    if components is not None:
        resource["component"] = components
    return resource


def _component(metric: str, reading: ReadingRecord | None, device_type: str) -> Json:
    if reading is None:
        return {"code": _metric_concept(metric, device_type), "dataAbsentReason": _unknown()}
    return {"code": _metric_concept(metric, device_type), "valueQuantity": _quantity(reading)}


def _quantity(reading: ReadingRecord) -> Json:
    unit = METRICS[reading.metric].unit
    return {"value": _decimal(reading.value), "unit": unit, "system": UCUM_SYSTEM, "code": unit}


@cache
def _metric_concept(metric: str, device_type: str) -> Json:
    return _concept_json(metric_codes(metric, device_type), METRICS[metric].display)


@cache
def _category(code: str) -> list[Json]:
    return [_concept_json([observation_category(code)])]


@cache
def _blood_pressure_concept() -> Json:
    return _concept_json(BLOOD_PRESSURE_CODES, BLOOD_PRESSURE_TEXT)


@cache
def _meta(code: str, attributed: bool) -> Json | None:
    profiles = observation_profiles(code, attributed=attributed)
    return {"profile": list(profiles)} if profiles else None


#: the name space of ids.observation_identifier
_NAMESPACE_BYTES = uuid5(NAMESPACE_URL, f"{FHIR_BASE}/Observation").bytes


def _identifier(resource_id: str) -> str:
    """ids.observation_identifier(resource_id): RFC 4122 version 5 (SHA-1 of the name
    space and the id), written without making UUID objects."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + resource_id.encode()).digest()[:16])  # noqa: S324 - UUID v5 is SHA-1 by definition
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: references shared between the Observations of a page (a page is one patient's, mostly)
_REFERENCES = 4096


@lru_cache(maxsize=_REFERENCES)
def _patient_reference(patient_id: UUID) -> Json:
    return {"reference": f"Patient/{patient_id}"}


@lru_cache(maxsize=_REFERENCES)
def _performer(provider_id: UUID) -> list[Json]:
    return [{"reference": f"Organization/{provider_id}"}]


@lru_cache(maxsize=_REFERENCES)
def _device_reference(device_id: str) -> Json:
    return {"reference": f"Device/{device_id}"}


@cache
def _unknown() -> Json:
    return _concept_json([UNKNOWN_ABSENT_REASON])


def patient_json(record: PatientRecord) -> Json:
    """r4b.patient, as a JSON dict."""
    pseudonymized = _coding_json(PSEUDONYMIZED)
    return {
        "resourceType": "Patient",
        "id": str(record.id),
        "meta": {"security": [pseudonymized]},
        "identifier": [
            {
                "type": {"coding": [pseudonymized]},
                "system": PATIENT_PSEUDONYM_SYSTEM,
                "value": record.identifier_hash.hex(),
            }
        ],
        "managingOrganization": {"reference": f"Organization/{record.organisation_id}"},
    }


def device_json(record: DeviceRecord) -> Json:
    """mapping.device, as a JSON dict."""
    resource: Json = {
        "resourceType": "Device",
        "id": record.device_id,
        "identifier": [{"system": DEVICE_ID_SYSTEM, "value": record.device_id}],
        "status": "active" if record.revoked_at is None else "inactive",
        "serialNumber": record.serial,
        "deviceName": [{"name": record.model, "type": "model-name"}],
        "modelNumber": record.model,
        "type": _concept_json(
            device_type_codes(record.device_type), DEVICE_TYPES[record.device_type].display
        ),
    }
    spec = DEVICE_TYPES[record.device_type].mdc_specialization
    if spec is not None:
        resource["specialization"] = [{"systemType": _concept_json([mdc_code(spec)])}]
    if record.firmware:
        resource["version"] = [
            {
                "type": _concept_json([MDC_FIRMWARE_REVISION], FIRMWARE_REVISION_TEXT),
                "value": record.firmware,
            }
        ]
    resource["owner"] = {"reference": f"Organization/{record.organisation_id}"}
    return resource


def organization_json(record: OrganisationRecord) -> Json:
    """mapping.organization, as a JSON dict."""
    resource: Json = {"resourceType": "Organization", "id": str(record.id)}
    types = [_concept_json(ORGANISATION_TYPES[record.kind])]
    if record.fls_code is not None:
        resource["identifier"] = [{"system": ASL_FLS_SYSTEM, "value": record.fls_code}]
        types.append(_concept_json([AZIENDA_SANITARIA_LOCALE]))
    resource["active"] = True
    resource["type"] = types
    resource["name"] = record.name
    return resource


def location_json(record: MunicipalityRecord) -> Json:
    """mapping.location, as a JSON dict."""
    istat = Code(ISTAT_MUNICIPALITY_SYSTEM, record.istat_code, record.name)
    snai = Code(SNAI_CLASS_SYSTEM, record.snai_class, record.snai_class_label)
    resource: Json = {
        "resourceType": "Location",
        "id": record.istat_code,
        "extension": [{"url": SNAI_CLASS_EXTENSION, "valueCoding": _coding_json(snai)}],
        "identifier": [{"system": ISTAT_MUNICIPALITY_SYSTEM, "value": record.istat_code}],
        "status": "active",
        "name": record.name,
        "mode": "instance",
        "address": {
            "city": record.name,
            "_city": {
                "extension": [{"url": SC_CODING_EXTENSION, "valueCoding": _coding_json(istat)}]
            },
            "country": ITALY,
        },
        "physicalType": _concept_json([JURISDICTION]),
    }
    if record.latitude is not None and record.longitude is not None:
        resource["position"] = {
            "longitude": _decimal(record.longitude),
            "latitude": _decimal(record.latitude),
        }
    return resource


def _coding_json(code: Code) -> Json:
    return {"system": code.system, "code": code.code, "display": code.display}


def _concept_json(codes: Iterable[Code], text: str | None = None) -> Json:
    concept: Json = {"coding": [_coding_json(code) for code in codes]}
    if text is not None:
        concept["text"] = text
    return concept


def _instant(moment: datetime) -> str:
    """A FHIR dateTime/instant in UTC, as pydantic writes an aware datetime."""
    if moment.tzinfo is not UTC:  # the API's connections give UTC already
        moment = as_utc(moment)
    return moment.isoformat()[:-6] + "Z"


def _decimal(value: float) -> float:
    if value >= _INTEGRAL_FROM or value <= -_INTEGRAL_FROM:
        return int(Decimal(repr(value)))
    return value
