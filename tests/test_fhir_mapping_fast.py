"""The fast serialiser writes exactly what the validated models write, over generated rows:
Observations (panels, lone halves, any decimal) and the other resources; its documents are
valid R4B, and a wrong one fails the comparison."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir_mapping_fixtures import (
    DEVICE,
    GENERATED,
    PATIENT,
    PROVIDER,
    STARTUP,
    device_ids,
    moments,
    reading,
)
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.fhir.mapping import fast, r4b
from ehealthlab.fhir.mapping.rows import (
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
    ReadingRecord,
    group_measurements,
)

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
