"""The FHIR mapping of readings to Observations: each validates as R4B and has the shape of
the official R4 examples, each metric gets its codes, category, profile and unit, and what
claims the vital-signs profile has its mandatory elements; blood-pressure panels, attribution
to a patient and provider, and the device's clock kept when it was corrected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation
from fhir_mapping_fixtures import (
    AT,
    DEVICE,
    MDC,
    PATIENT,
    PROVIDER,
    as_json,
    codings,
    cuff_measurement,
    reading,
)

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.mapping import fast, r4b
from ehealthlab.fhir.mapping.codes import (
    BLOOD_PRESSURE,
    DEVICE_CLOCK_TIME_EXTENSION,
    FHIR_BASE,
    VITAL_SIGNS_PROFILE,
)
from ehealthlab.fhir.mapping.ids import observation_id, parse_observation_id
from ehealthlab.fhir.mapping.rows import BloodPressureReadings, group_measurements

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

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
