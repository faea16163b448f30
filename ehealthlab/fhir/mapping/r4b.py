"""Stored rows as FHIR R4 resources, built and validated with fhir.resources' R4B models.

Pure functions: a record in, a validated model out (`.model_dump(mode="json")` is the FHIR
JSON). R4B's models are used because fhir.resources' default models are R5; for the
resources mapped here R4B (4.3.0) and R4 (4.0.1) have the same elements. fast.py builds the
same JSON without models for large result sets; tests prove the two equal. docs/fhir.md
explains every element and where its codes come from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from fhir.resources.R4B.address import Address
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceSpecialization, DeviceVersion
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.location import Location, LocationPosition
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

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
from ehealthlab.fhir.mapping.ids import observation_id, observation_identifier
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


def observations(readings: Iterable[ReadingRecord]) -> list[Observation]:
    """One Observation per measurement: blood-pressure readings paired into panels."""
    return [observation(source) for source in group_measurements(readings)]


def observation(source: ReadingRecord | BloodPressureReadings) -> Observation:
    """A reading as an Observation; a systolic or diastolic reading (alone, or paired in
    BloodPressureReadings) as the blood-pressure panel it belongs to."""
    if isinstance(source, BloodPressureReadings):
        return _blood_pressure(source)
    if source.metric == SYSTOLIC:
        return _blood_pressure(BloodPressureReadings(source, None))
    if source.metric == DIASTOLIC:
        return _blood_pressure(BloodPressureReadings(None, source))
    return Observation(
        **_observation_common(source, source.metric, source),
        code=_concept(
            metric_codes(source.metric, source.device_type), METRICS[source.metric].display
        ),
        valueQuantity=_quantity(source),
    )


def _blood_pressure(panel: BloodPressureReadings) -> Observation:
    principal = panel.principal
    last = max((r for r in panel if r is not None), key=lambda reading: as_utc(reading.received_at))
    return Observation(
        **_observation_common(principal, BLOOD_PRESSURE, last),
        code=_concept(BLOOD_PRESSURE_CODES, BLOOD_PRESSURE_TEXT),
        component=[
            _component(SYSTOLIC, panel.systolic, principal.device_type),
            _component(DIASTOLIC, panel.diastolic, principal.device_type),
        ],
    )


def _observation_common(
    reading: ReadingRecord, code: str, last_received: ReadingRecord
) -> dict[str, Any]:
    """Everything but code, value and components; `last_received` gives `issued`."""
    resource_id = observation_id(reading.device_id, code, reading.at)
    profiles = observation_profiles(code, attributed=reading.patient_id is not None)
    return {
        "id": resource_id,
        "meta": Meta(profile=list(profiles)) if profiles else None,
        "extension": (
            [Extension(url=DEVICE_CLOCK_TIME_EXTENSION, valueDateTime=as_utc(reading.at))]
            if reading.clock_corrected
            else None
        ),
        "identifier": [Identifier(system=URI_SYSTEM, value=observation_identifier(resource_id))],
        "status": "final",
        "category": [_concept([observation_category(code)])],
        "subject": _reference("Patient", reading.patient_id),
        "effectiveDateTime": as_utc(reading.measured_at),
        "issued": as_utc(last_received.received_at),
        "performer": (
            [_reference("Organization", reading.provider_id)]
            if reading.provider_id is not None
            else None
        ),
        "device": _reference("Device", reading.device_id),
    }


def _component(
    metric: str, reading: ReadingRecord | None, device_type: str
) -> ObservationComponent:
    code = _concept(metric_codes(metric, device_type), METRICS[metric].display)
    if reading is None:
        return ObservationComponent(code=code, dataAbsentReason=_concept([UNKNOWN_ABSENT_REASON]))
    return ObservationComponent(code=code, valueQuantity=_quantity(reading))


def _quantity(reading: ReadingRecord) -> Quantity:
    unit = METRICS[reading.metric].unit
    return Quantity(value=reading.value, unit=unit, system=UCUM_SYSTEM, code=unit)


def patient(record: PatientRecord) -> Patient:
    """A pseudonymous Patient: the keyed hash as identifier, no name, birth date or label."""
    return Patient(
        id=str(record.id),
        meta=Meta(security=[_coding(PSEUDONYMIZED)]),
        identifier=[
            Identifier(
                type=_concept([PSEUDONYMIZED]),
                system=PATIENT_PSEUDONYM_SYSTEM,
                value=record.identifier_hash.hex(),
            )
        ],
        managingOrganization=_reference("Organization", record.organisation_id),
    )


def device(record: DeviceRecord) -> Device:
    """A registered device, owned by its start-up; its id is the device_id."""
    spec = DEVICE_TYPES[record.device_type].mdc_specialization
    return Device(
        id=record.device_id,
        identifier=[Identifier(system=DEVICE_ID_SYSTEM, value=record.device_id)],
        status="active" if record.revoked_at is None else "inactive",
        serialNumber=record.serial,
        deviceName=[DeviceDeviceName(name=record.model, type="model-name")],
        modelNumber=record.model,
        type=_concept(
            device_type_codes(record.device_type), DEVICE_TYPES[record.device_type].display
        ),
        specialization=(
            [DeviceSpecialization(systemType=_concept([mdc_code(spec)]))] if spec else None
        ),
        version=(
            [
                DeviceVersion(
                    type=_concept([MDC_FIRMWARE_REVISION], FIRMWARE_REVISION_TEXT),
                    value=record.firmware,
                )
            ]
            if record.firmware
            else None
        ),
        owner=_reference("Organization", record.organisation_id),
    )


def organization(record: OrganisationRecord) -> Organization:
    """A start-up, health provider or the operator; an ASL also as HL7 Italia codes one."""
    hl7_type, our_kind = ORGANISATION_TYPES[record.kind]
    types = [_concept([hl7_type, our_kind])]
    identifiers = None
    if record.fls_code is not None:
        identifiers = [Identifier(system=ASL_FLS_SYSTEM, value=record.fls_code)]
        types.append(_concept([AZIENDA_SANITARIA_LOCALE]))
    return Organization(
        id=str(record.id), identifier=identifiers, active=True, type=types, name=record.name
    )


def location(record: MunicipalityRecord) -> Location:
    """A municipality: its ISTAT code as id and identifier, coded in the address the way
    HL7 Italia's Address-it-base does, its SNAI class, and its coordinates."""
    istat = Code(ISTAT_MUNICIPALITY_SYSTEM, record.istat_code, record.name)
    position = None
    if record.latitude is not None and record.longitude is not None:
        position = LocationPosition(longitude=record.longitude, latitude=record.latitude)
    return Location(
        id=record.istat_code,
        extension=[
            Extension(
                url=SNAI_CLASS_EXTENSION,
                valueCoding=_coding(
                    Code(SNAI_CLASS_SYSTEM, record.snai_class, record.snai_class_label)
                ),
            )
        ],
        identifier=[Identifier(system=ISTAT_MUNICIPALITY_SYSTEM, value=record.istat_code)],
        status="active",
        name=record.name,
        mode="instance",
        address=Address(
            city=record.name,
            city__ext=FHIRPrimitiveExtension(
                extension=[Extension(url=SC_CODING_EXTENSION, valueCoding=_coding(istat))]
            ),
            country=ITALY,
        ),
        physicalType=_concept([JURISDICTION]),
        position=position,
    )


def _coding(code: Code) -> Coding:
    return Coding(system=code.system, code=code.code, display=code.display)


def _concept(codes: Iterable[Code], text: str | None = None) -> CodeableConcept:
    return CodeableConcept(coding=[_coding(code) for code in codes], text=text)


def _reference(resource_type: str, resource_id: UUID | str | None) -> Reference | None:
    if resource_id is None:
        return None
    return Reference(reference=f"{resource_type}/{resource_id}")
