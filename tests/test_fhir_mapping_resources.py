"""The FHIR mapping of the other resources: a pseudonymous Patient, a Device naming its type,
model, serial, firmware and owner, Organizations by kind (an azienda sanitaria as HL7 Italia
identifies it), and a municipality as a Location."""

from __future__ import annotations

import pytest
from fhir_mapping_fixtures import AT, DEVICE, MDC, PATIENT, PROVIDER, STARTUP, as_json, codings

from ehealthlab.fhir.mapping import r4b
from ehealthlab.fhir.mapping.codes import (
    ASL_FLS_SYSTEM,
    FHIR_BASE,
    ISTAT_MUNICIPALITY_SYSTEM,
    PATIENT_PSEUDONYM_SYSTEM,
    SC_CODING_EXTENSION,
    SNAI_CLASS_EXTENSION,
)
from ehealthlab.fhir.mapping.rows import (
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
)

# -- the other resources ---------------------------------------------------------------------------


def test_a_patient_is_pseudonymous() -> None:
    resource = as_json(r4b.patient(PatientRecord(PATIENT, PROVIDER, bytes(range(32)))))
    assert set(resource) == {"resourceType", "id", "meta", "identifier", "managingOrganization"}
    (identifier,) = resource["identifier"]
    assert identifier["system"] == PATIENT_PSEUDONYM_SYSTEM
    assert identifier["value"] == bytes(range(32)).hex()
    assert identifier["type"]["coding"][0]["code"] == "PSEUDED"
    assert resource["meta"]["security"][0]["code"] == "PSEUDED"
    assert resource["managingOrganization"] == {"reference": f"Organization/{PROVIDER}"}


def test_a_device_names_its_type_model_serial_firmware_and_owner() -> None:
    record = DeviceRecord(DEVICE, STARTUP, "blood_pressure_monitor", "BP-200", "SN-1", "2.1", None)
    resource = as_json(r4b.device(record))
    assert resource["id"] == DEVICE
    assert resource["status"] == "active"
    assert resource["deviceName"] == [{"name": "BP-200", "type": "model-name"}]
    assert resource["modelNumber"] == "BP-200"
    assert resource["serialNumber"] == "SN-1"
    assert codings(resource["type"]) == {
        (MDC, "528391"),
        (f"{FHIR_BASE}/CodeSystem/device-type", "blood_pressure_monitor"),
    }
    assert codings(resource["specialization"][0]["systemType"]) == {(MDC, "528391")}
    assert resource["version"][0]["value"] == "2.1"
    assert codings(resource["version"][0]["type"]) == {(MDC, "531976")}
    assert resource["owner"] == {"reference": f"Organization/{STARTUP}"}


def test_a_revoked_device_without_specialization_or_firmware() -> None:
    record = DeviceRecord(DEVICE, STARTUP, "activity_tracker", "Fit", "7", None, AT)
    resource = as_json(r4b.device(record))
    assert resource["status"] == "inactive"
    assert "specialization" not in resource
    assert "version" not in resource
    assert codings(resource["type"]) == {
        (f"{FHIR_BASE}/CodeSystem/device-type", "activity_tracker")
    }


@pytest.mark.parametrize(
    ("kind", "hl7_type"), [("startup", "bus"), ("provider", "prov"), ("operator", "govt")]
)
def test_organisation_kinds(kind: str, hl7_type: str) -> None:
    resource = as_json(r4b.organization(OrganisationRecord(PROVIDER, kind, "Acme")))
    assert codings(resource["type"][0]) == {
        ("http://terminology.hl7.org/CodeSystem/organization-type", hl7_type),
        (f"{FHIR_BASE}/CodeSystem/organisation-kind", kind),
    }
    assert "identifier" not in resource


def test_an_azienda_sanitaria_is_identified_as_hl7_italia_does() -> None:
    record = OrganisationRecord(PROVIDER, "provider", "ASL TO3", fls_code="010203")
    resource = as_json(r4b.organization(record))
    assert resource["identifier"] == [{"system": ASL_FLS_SYSTEM, "value": "010203"}]
    assert codings(resource["type"][1]) == {
        ("http://terminology.hl7.it/CodeSystem/it-tipoEntita", "asl")
    }


def test_a_municipality_carries_its_istat_code_snai_class_and_coordinates() -> None:
    record = MunicipalityRecord("001003", "Ala di Stura", 45.315, 7.304, "E", "E - Periferico")
    resource = as_json(r4b.location(record))
    assert resource["id"] == "001003"
    assert resource["identifier"] == [{"system": ISTAT_MUNICIPALITY_SYSTEM, "value": "001003"}]
    city_code = resource["address"]["_city"]["extension"][0]
    assert city_code["url"] == SC_CODING_EXTENSION
    assert city_code["valueCoding"]["code"] == "001003"
    assert city_code["valueCoding"]["system"] == ISTAT_MUNICIPALITY_SYSTEM
    assert resource["address"]["city"] == "Ala di Stura"
    assert resource["extension"][0]["url"] == SNAI_CLASS_EXTENSION
    assert resource["extension"][0]["valueCoding"]["code"] == "E"
    assert resource["position"] == {"longitude": 7.304, "latitude": 45.315}


def test_a_municipality_without_coordinates_has_no_position() -> None:
    record = MunicipalityRecord("001003", "Ala di Stura", None, 7.3, "E", "E - Periferico")
    assert "position" not in as_json(r4b.location(record))
