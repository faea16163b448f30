"""The FHIR mapping: every resource validates as R4B, Observations have the shape of the
official R4 examples, ids are stable and reversible, and the fast serialiser writes exactly
what the models write, over generated rows."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.mapping import fast, r4b
from ehealthlab.fhir.mapping.codes import (
    ASL_FLS_SYSTEM,
    BLOOD_PRESSURE,
    DEVICE_CLOCK_TIME_EXTENSION,
    FHIR_BASE,
    ISTAT_MUNICIPALITY_SYSTEM,
    PATIENT_PSEUDONYM_SYSTEM,
    SC_CODING_EXTENSION,
    SNAI_CLASS_EXTENSION,
    VITAL_SIGNS_PROFILE,
)
from ehealthlab.fhir.mapping.ids import (
    MAX_ID_LENGTH,
    observation_id,
    observation_identifier,
    parse_observation_id,
)
from ehealthlab.fhir.mapping.rows import (
    BloodPressureReadings,
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
    ReadingRecord,
    group_measurements,
)

LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PATIENT = UUID("5d4d5165-e465-4760-8b8f-930046f5c3ba")
PROVIDER = UUID("e3aadc22-d0b2-4b52-b7fc-ea47afb466d5")
STARTUP = UUID("0b6f0a43-53a3-4c1c-9f53-2e8d1d5c2a10")
DEVICE = "bpm-9e5ccae6b9b8242b"
AT = datetime(2026, 11, 25, 8, 0, 30, tzinfo=timezone(timedelta(hours=1)))
GENERATED = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the official FHIR R4 examples, abridged to the elements the mapping must share ------------

#: https://hl7.org/fhir/R4/observation-example-bloodpressure.json (narrative, basedOn,
#: interpretation, bodySite and the SNOMED/local component codings left out)
OFFICIAL_BLOOD_PRESSURE: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "blood-pressure",
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
    "identifier": [
        {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281"}
    ],
    "status": "final",
    "category": [
        {"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}
    ],
    "code": {
        "coding": [
            {
                "system": LOINC,
                "code": "85354-9",
                "display": "Blood pressure panel with all children optional",
            }
        ],
        "text": "Blood pressure systolic & diastolic",
    },
    "subject": {"reference": "Patient/example"},
    "effectiveDateTime": "2012-09-17",
    "performer": [{"reference": "Practitioner/example"}],
    "component": [
        {
            "code": {
                "coding": [
                    {"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}
                ]
            },
            "valueQuantity": {"value": 107, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
        {
            "code": {
                "coding": [
                    {"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}
                ]
            },
            "valueQuantity": {"value": 60, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
    ],
}

#: https://hl7.org/fhir/R4/observation-example-heart-rate.json (narrative left out)
OFFICIAL_HEART_RATE: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "heart-rate",
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
    "status": "final",
    "category": [
        {
            "coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}],
            "text": "Vital Signs",
        }
    ],
    "code": {
        "coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}],
        "text": "Heart rate",
    },
    "subject": {"reference": "Patient/example"},
    "effectiveDateTime": "1999-07-02",
    "valueQuantity": {"value": 44, "unit": "beats/minute", "system": UCUM, "code": "/min"},
}


def codings(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


def reference_type(reference: dict[str, Any]) -> str:
    return reference["reference"].split("/")[0]


def shape(observation: dict[str, Any]) -> dict[str, Any]:
    """What two Observations of the same kind must share: profile, identifier system,
    status, category, LOINC codes, unit codes, what subject refers to, the effective time's
    element, and each component's codes and unit."""
    return {
        "profiles": set(observation.get("meta", {}).get("profile", [])),
        "identifier systems": {i["system"] for i in observation.get("identifier", [])},
        "status": observation["status"],
        "categories": set().union(*(codings(c) for c in observation["category"])),
        "loinc": {c for c in codings(observation["code"]) if c[0] == LOINC},
        "subject": reference_type(observation["subject"]),
        "effective": [k for k in observation if k.startswith("effective")],
        "unit": {
            (q["system"], q["code"]) for q in [observation.get("valueQuantity")] if q is not None
        },
        "components": [
            (
                {c for c in codings(component["code"]) if c[0] == LOINC},
                (component["valueQuantity"]["system"], component["valueQuantity"]["code"]),
            )
            for component in observation.get("component", [])
        ],
    }


def contains_shape(ours: dict[str, Any], official: dict[str, Any]) -> None:
    mine, theirs = shape(ours), shape(official)
    assert mine["profiles"] >= theirs["profiles"]
    assert mine["identifier systems"] >= theirs["identifier systems"]
    assert mine["categories"] >= theirs["categories"]
    assert mine["loinc"] >= theirs["loinc"]
    for key in ("status", "subject", "effective", "unit"):
        assert mine[key] == theirs[key], key
    assert len(mine["components"]) == len(theirs["components"])
    for (my_codes, my_unit), (their_codes, their_unit) in zip(
        mine["components"], theirs["components"], strict=True
    ):
        assert my_codes >= their_codes
        assert my_unit == their_unit


def reading(metric: str, value: float, **changes: Any) -> ReadingRecord:
    device_type = (
        "blood_pressure_monitor"
        if metric in DEVICE_TYPES["blood_pressure_monitor"].metrics
        else "multiparameter_monitor"
    )
    base = ReadingRecord(
        device_id=DEVICE,
        device_type=device_type,
        metric=metric,
        at=AT,
        value=value,
        measured_at=AT,
        received_at=AT + timedelta(seconds=38),
        clock_corrected=False,
        patient_id=PATIENT,
        provider_id=PROVIDER,
    )
    return base._replace(**changes)


def cuff_measurement(**changes: Any) -> list[ReadingRecord]:
    return [
        reading("bp_systolic", 142.0, **changes),
        reading("bp_diastolic", 91.0, **changes),
        reading("heart_rate", 72.0, **changes),
    ]


def as_json(model: Any) -> dict[str, Any]:
    return json.loads(model.model_dump_json())


# -- the official examples -----------------------------------------------------------------


@pytest.mark.parametrize("example", [OFFICIAL_BLOOD_PRESSURE, OFFICIAL_HEART_RATE])
def test_the_abridged_official_examples_are_still_valid_r4b(example: dict[str, Any]) -> None:
    Observation.model_validate(example)


def test_a_cuff_measurement_is_a_panel_and_a_heart_rate_shaped_like_the_official_examples() -> None:
    panel, heart_rate = (as_json(o) for o in r4b.observations(cuff_measurement()))
    contains_shape(panel, OFFICIAL_BLOOD_PRESSURE)
    contains_shape(heart_rate, OFFICIAL_HEART_RATE)
    assert [c["valueQuantity"]["value"] for c in panel["component"]] == [142.0, 91.0]
    assert heart_rate["valueQuantity"]["value"] == 72.0
    assert panel["meta"]["profile"] == [
        VITAL_SIGNS_PROFILE,
        "http://hl7.org/fhir/StructureDefinition/bp",
    ]


def test_a_different_shape_is_caught() -> None:
    """The shape comparison fails on a wrong unit or a missing component: it can fail."""
    panel = as_json(r4b.observation(reading("bp_systolic", 120.0)))
    panel["component"][1]["valueQuantity"] = {"value": 80, "system": UCUM, "code": "kPa"}
    with pytest.raises(AssertionError):
        contains_shape(panel, OFFICIAL_BLOOD_PRESSURE)


# -- codes per metric --------------------------------------------------------------------------

VS = "vital-signs"
CODES = [
    # metric, device type, LOINC codes, MDC code or None, category, R4 profile or None, unit
    ("heart_rate", "blood_pressure_monitor", ["8867-4"], "149546", VS, "heartrate", "/min"),
    ("heart_rate", "pulse_oximeter", ["8867-4"], "149530", VS, "heartrate", "/min"),
    ("heart_rate", "activity_tracker", ["8867-4"], None, VS, "heartrate", "/min"),
    ("spo2", "pulse_oximeter", ["2708-6", "59408-5"], "150456", VS, "oxygensat", "%"),
    ("respiratory_rate", "activity_tracker", ["9279-1"], "151562", VS, "resprate", "/min"),
    ("body_weight", "weighing_scale", ["29463-7"], "188736", VS, "bodyweight", "kg"),
    ("body_temperature", "thermometer", ["8310-5"], "150364", VS, "bodytemp", "Cel"),
    ("blood_glucose", "glucometer", ["2339-0"], "160184", "laboratory", None, "mg/dL"),
    ("steps", "activity_tracker", ["55423-8"], None, "activity", None, "{steps}"),
]


@pytest.mark.parametrize("row", CODES, ids=[f"{r[0]}-{r[1]}" for r in CODES])
def test_each_metric_gets_its_codes_category_profile_and_unit(row: tuple[Any, ...]) -> None:
    metric, device_type, loinc, mdc, category, profile, unit = row
    resource = as_json(r4b.observation(reading(metric, 10.0, device_type=device_type)))
    coding = resource["code"]["coding"]
    assert [c["code"] for c in coding if c["system"] == LOINC] == loinc
    assert coding[0]["system"] == LOINC  # the vital-signs profiles slice on LOINC
    assert [c["code"] for c in coding if c["system"] == MDC] == ([mdc] if mdc else [])
    assert [c["code"] for c in resource["category"][0]["coding"]] == [category]
    expected_profiles = (
        [VITAL_SIGNS_PROFILE, f"http://hl7.org/fhir/StructureDefinition/{profile}"]
        if profile
        else None
    )
    assert resource.get("meta", {}).get("profile") == expected_profiles
    assert resource["valueQuantity"] == {"value": 10.0, "unit": unit, "system": UCUM, "code": unit}


def test_every_metric_is_covered_by_the_table() -> None:
    panel_parts = {"bp_systolic", "bp_diastolic"}
    assert {row[0] for row in CODES} | panel_parts == set(METRICS)


def conforms_to_r4_vital_signs(resource: dict[str, Any]) -> bool:
    """The R4 vital-signs profile's mandatory elements (https://hl7.org/fhir/R4/vitalsigns.html):
    status, category vital-signs, a LOINC code, a Patient subject, effective[x], and a
    value or components each with a value or a data-absent reason."""

    def has_value(element: dict[str, Any]) -> bool:
        quantity = element.get("valueQuantity")
        if quantity is not None:
            return all(k in quantity for k in ("value", "unit", "system", "code"))
        return "dataAbsentReason" in element

    return (
        resource.get("status") == "final"
        and any((CATEGORY, "vital-signs") in codings(c) for c in resource.get("category", []))
        and any(system == LOINC for system, _ in codings(resource["code"]))
        and resource.get("subject", {}).get("reference", "").startswith("Patient/")
        and "effectiveDateTime" in resource
        and (
            all(has_value(c) for c in resource["component"])
            if "component" in resource
            else has_value(resource)
        )
    )


def test_every_observation_claiming_a_vital_signs_profile_has_its_mandatory_elements() -> None:
    claims = 0
    for metric, device_type, *_ in [*CODES, ("bp_systolic", "blood_pressure_monitor")]:
        for patient in (PATIENT, None):
            changes = {"device_type": device_type, "patient_id": patient, "provider_id": patient}
            resource = as_json(r4b.observation(reading(metric, 10.0, **changes)))
            claimed = VITAL_SIGNS_PROFILE in resource.get("meta", {}).get("profile", [])
            assert not claimed or conforms_to_r4_vital_signs(resource), resource
            claims += claimed
    assert claims == 8  # the seven vital-sign rows and the panel, when attributed
    assert not conforms_to_r4_vital_signs({**OFFICIAL_HEART_RATE, "subject": {}})


# -- blood-pressure panels -----------------------------------------------------------------------


def test_the_order_of_readings_does_not_change_the_panel() -> None:
    forward = [as_json(o) for o in r4b.observations(cuff_measurement())]
    backward = [as_json(o) for o in r4b.observations(reversed(cuff_measurement()))]
    assert sorted(forward, key=lambda r: r["id"]) == sorted(backward, key=lambda r: r["id"])


def test_a_lone_systolic_reading_is_a_panel_whose_diastolic_is_absent() -> None:
    panel = as_json(r4b.observation(reading("bp_systolic", 150.0)))
    assert panel["id"] == observation_id(DEVICE, BLOOD_PRESSURE, AT)
    systolic, diastolic = panel["component"]
    assert systolic["valueQuantity"]["value"] == 150.0
    assert codings(diastolic["code"]) >= {(LOINC, "8462-4"), (MDC, "150022")}
    assert "valueQuantity" not in diastolic
    assert codings(diastolic["dataAbsentReason"]) == {
        ("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown")
    }
    assert conforms_to_r4_vital_signs(panel)


def test_readings_of_other_times_or_devices_are_other_panels() -> None:
    readings = [
        reading("bp_systolic", 140.0),
        reading("bp_diastolic", 90.0, at=AT + timedelta(seconds=1)),
        reading("bp_diastolic", 90.0, device_id="bpm-0000000000000001"),
    ]
    grouped = group_measurements(readings)
    assert [(g.systolic is not None, g.diastolic is not None) for g in grouped] == [
        (True, False),
        (False, True),
        (False, True),
    ]


def test_a_panel_is_issued_when_its_last_reading_arrived() -> None:
    late = AT + timedelta(hours=2)
    panel = as_json(
        r4b.observation(
            BloodPressureReadings(
                reading("bp_systolic", 140.0), reading("bp_diastolic", 90.0, received_at=late)
            )
        )
    )
    assert panel["issued"] == "2026-11-25T09:00:30Z"


# -- attribution and clocks --------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["bp_systolic", "heart_rate", "steps"])
def test_an_unassigned_reading_has_no_subject_performer_or_profile_claim(metric: str) -> None:
    resource = as_json(r4b.observation(reading(metric, 100.0, patient_id=None, provider_id=None)))
    assert "subject" not in resource
    assert "performer" not in resource
    assert "meta" not in resource
    assert resource["device"] == {"reference": f"Device/{DEVICE}"}
    assert not conforms_to_r4_vital_signs(resource)
    Observation.model_validate(resource)


def test_an_attributed_reading_names_its_patient_and_provider() -> None:
    resource = as_json(r4b.observation(reading("heart_rate", 60.0)))
    assert resource["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert resource["performer"] == [{"reference": f"Organization/{PROVIDER}"}]


def test_a_clock_corrected_reading_keeps_the_device_time_in_an_extension() -> None:
    """A cuff whose clock battery died says 2000-01-01; the platform corrected the time."""
    device_time = datetime(2000, 1, 1, tzinfo=UTC)
    resource = as_json(
        r4b.observation(
            reading("heart_rate", 60.0, at=device_time, measured_at=AT, clock_corrected=True)
        )
    )
    assert resource["effectiveDateTime"] == "2026-11-25T07:00:30Z"
    assert resource["extension"] == [
        {"url": DEVICE_CLOCK_TIME_EXTENSION, "valueDateTime": "2000-01-01T00:00:00Z"}
    ]
    assert DEVICE_CLOCK_TIME_EXTENSION.startswith(FHIR_BASE + "/StructureDefinition/")
    # the id names the stored row, whose key holds the device's time
    assert parse_observation_id(resource["id"]).at == device_time


def test_a_reading_with_a_good_clock_has_no_extension() -> None:
    resource = as_json(r4b.observation(reading("heart_rate", 60.0)))
    assert "extension" not in resource
    assert resource["effectiveDateTime"] == "2026-11-25T07:00:30Z"
    assert resource["issued"] == "2026-11-25T07:01:08Z"


def test_a_time_without_zone_is_refused() -> None:
    naive = reading("heart_rate", 60.0, measured_at=datetime(2026, 11, 25, 8, 0))
    with pytest.raises(InvalidInputError, match="no time zone"):
        r4b.observation(naive)
    with pytest.raises(InvalidInputError, match="no time zone"):
        fast.observation_json(naive)


# -- ids and identifiers -------------------------------------------------------------------------


def test_ids_and_identifiers_do_not_change_between_runs_or_releases() -> None:
    """Pinned values: a client that stored these must find the same resources tomorrow."""
    panel, heart_rate = r4b.observations(cuff_measurement())
    assert panel.id == "bpm-9e5ccae6b9b8242b.blood-pressure.1795590030000000"
    assert heart_rate.id == "bpm-9e5ccae6b9b8242b.heart-rate.1795590030000000"
    assert panel.identifier[0].value == "urn:uuid:55f3c67d-56e5-5ae5-bb85-226be4010039"
    again = r4b.observations(cuff_measurement(received_at=AT + timedelta(days=1)))
    assert [o.identifier[0].value for o in again] == [
        panel.identifier[0].value,
        heart_rate.identifier[0].value,
    ]


def test_the_same_moment_in_another_offset_is_the_same_observation() -> None:
    utc = AT.astimezone(UTC)
    assert observation_id(DEVICE, "heart_rate", utc) == observation_id(DEVICE, "heart_rate", AT)


device_ids = st.one_of(
    st.builds(
        lambda prefix, number: f"{prefix}-{number:016x}",
        st.sampled_from(["bpm", "oxi", "scale", "temp", "gluco", "act", "multi"]),
        st.integers(0, 2**64 - 1),
    ),
    st.from_regex(r"[a-z0-9][a-z0-9-]{2,21}", fullmatch=True),
)
offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60)
)
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)
observation_codes = st.sampled_from(
    sorted({BLOOD_PRESSURE} | set(METRICS) - {"bp_systolic", "bp_diastolic"})
)


@GENERATED
@given(device_ids, observation_codes, moments)
def test_an_observation_id_names_its_rows(device_id: str, code: str, at: datetime) -> None:
    resource_id = observation_id(device_id, code, at)
    assert re.fullmatch(r"[A-Za-z0-9\-\.]{1,64}", resource_id)
    key = parse_observation_id(resource_id)
    assert key == (device_id, code, at)
    assert key.metrics == (("bp_systolic", "bp_diastolic") if code == BLOOD_PRESSURE else (code,))


@GENERATED
@given(
    st.tuples(device_ids, observation_codes, moments),
    st.tuples(device_ids, observation_codes, moments),
)
def test_different_rows_never_share_an_id_or_identifier(
    first: tuple[str, str, datetime], second: tuple[str, str, datetime]
) -> None:
    same_key = first[:2] == second[:2] and first[2] == second[2]
    first_id, second_id = observation_id(*first), observation_id(*second)
    assert (first_id == second_id) == same_key
    assert (observation_identifier(first_id) == observation_identifier(second_id)) == same_key


@pytest.mark.parametrize(
    "resource_id",
    [
        "",
        "blood-pressure",
        f"{DEVICE}.bp-systolic.1795590030000000",  # a panel part is never an Observation
        f"{DEVICE}.heartrate.1795590030000000",
        f"{DEVICE}.heart-rate.",
        f"{DEVICE}.heart-rate.17955900300000001795590030000000179559003000000",
        f"{DEVICE}.heart-rate.99999999999999999999",  # after year 9999
        f"Device/{DEVICE}.heart-rate.1",
        f"{DEVICE}.heart-rate.1.2",
        f"{DEVICE}.heart-rate.01795590030000000",  # not how the id is written
        f"{DEVICE}.heart-rate.-0",
    ],
)
def test_ids_that_are_not_ours_are_refused(resource_id: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_observation_id(resource_id)


def test_a_device_id_too_long_for_an_observation_id_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="too long"):
        observation_id("d" * 50, "body_temperature", AT)
    assert len(observation_id("d" * 22, "body_temperature", datetime(1, 1, 1, tzinfo=UTC))) <= (
        MAX_ID_LENGTH
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


# -- generated rows: R4B validity and the fast serialiser --------------------------------------


@st.composite
def readings(draw: st.DrawFn, values: st.SearchStrategy[float] | None = None) -> ReadingRecord:
    device_type = draw(st.sampled_from(sorted(DEVICE_TYPES)))
    metric = METRICS[draw(st.sampled_from(sorted(DEVICE_TYPES[device_type].metrics)))]
    at = draw(moments)
    corrected = draw(st.booleans())
    measured_at = at + timedelta(seconds=draw(st.integers(-(10**9), 10**9))) if corrected else at
    attributed = draw(st.booleans())
    value = draw(
        values if values is not None else st.floats(metric.minimum, metric.maximum, allow_nan=False)
    )
    return ReadingRecord(
        device_id=draw(device_ids),
        device_type=device_type,
        metric=metric.code,
        at=at,
        value=value,
        measured_at=measured_at,
        received_at=measured_at + timedelta(seconds=draw(st.integers(0, 10**7))),
        clock_corrected=corrected,
        patient_id=draw(st.uuids()) if attributed else None,
        provider_id=draw(st.uuids()) if attributed else None,
    )


@st.composite
def measurements(draw: st.DrawFn) -> list[ReadingRecord]:
    """Readings where blood-pressure pairs, lone halves and other metrics mix."""
    batch = draw(st.lists(readings(), min_size=1, max_size=6))
    pairs = [
        r._replace(metric="bp_diastolic", value=r.value / 2)
        for r in batch
        if r.metric == "bp_systolic" and draw(st.booleans())
    ]
    return draw(st.permutations(batch + pairs))


def check_fast_path(model: Any, document: dict[str, Any]) -> None:
    assert document == model.model_dump(mode="json", exclude_none=True)
    assert fast.dumps(document) == model.model_dump_json().encode()
    assert type(model).model_validate(document).model_dump(mode="json") == document


@GENERATED
@given(measurements())
def test_fast_observations_equal_the_validated_models(batch: list[ReadingRecord]) -> None:
    models = r4b.observations(batch)
    documents = fast.observations_json(batch)
    assert len(models) == len(documents) == len(group_measurements(batch))
    for model, document in zip(models, documents, strict=True):
        check_fast_path(model, document)


@GENERATED
@given(readings(values=st.floats(allow_nan=False, allow_infinity=False)))
def test_fast_values_equal_the_models_for_any_decimal(record: ReadingRecord) -> None:
    """fhir.resources writes a large integral decimal as an integer; the fast path too."""
    model = r4b.observation(record).model_dump(mode="json")
    assert fast.observation_json(record) == model


patients = st.builds(PatientRecord, st.uuids(), st.uuids(), st.binary(min_size=32, max_size=32))
text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40
).filter(str.strip)
devices = st.builds(
    DeviceRecord,
    device_ids,
    st.uuids(),
    st.sampled_from(sorted(DEVICE_TYPES)),
    text,
    text,
    st.none() | text,
    st.none() | moments,
)
organisations = st.builds(
    OrganisationRecord,
    st.uuids(),
    st.sampled_from(["startup", "provider", "operator"]),
    text,
    st.none() | st.from_regex(r"[0-9]{6}", fullmatch=True),
)
coordinates = st.none() | st.floats(-90, 90, allow_nan=False)
municipalities = st.builds(
    MunicipalityRecord,
    st.from_regex(r"[0-9]{6}", fullmatch=True),
    text,
    coordinates,
    coordinates,
    st.sampled_from("ABCDEF"),
    text,
)


@GENERATED
@given(patients, devices, organisations, municipalities)
def test_fast_resources_equal_the_validated_models(
    patient: PatientRecord,
    device: DeviceRecord,
    organisation: OrganisationRecord,
    municipality: MunicipalityRecord,
) -> None:
    check_fast_path(r4b.patient(patient), fast.patient_json(patient))
    check_fast_path(r4b.device(device), fast.device_json(device))
    check_fast_path(r4b.organization(organisation), fast.organization_json(organisation))
    check_fast_path(r4b.location(municipality), fast.location_json(municipality))


@pytest.mark.parametrize(
    ("model_type", "document"),
    [
        (Patient, fast.patient_json(PatientRecord(PATIENT, PROVIDER, b"\x00" * 32))),
        (Organization, fast.organization_json(OrganisationRecord(PROVIDER, "provider", "A"))),
        (
            Device,
            fast.device_json(DeviceRecord(DEVICE, STARTUP, "glucometer", "G", "1", None, None)),
        ),
        (
            Location,
            fast.location_json(
                MunicipalityRecord("001272", "Torino", 45.07, 7.68, "A", "A - Polo")
            ),
        ),
        (Observation, fast.observation_json(reading("steps", 4200.0))),
    ],
)
def test_fast_documents_are_valid_r4b_resources_of_their_type(
    model_type: type[Any], document: dict[str, Any]
) -> None:
    assert document["resourceType"] == model_type.get_resource_type()
    model_type.model_validate(document)


def test_a_wrong_fast_document_fails_the_comparison() -> None:
    """check_fast_path notices one changed value: the property tests can fail."""
    record = reading("heart_rate", 60.0)
    document = fast.observation_json(record)
    document = {**document, "status": "preliminary"}
    with pytest.raises(AssertionError):
        check_fast_path(r4b.observation(record), document)
