"""`/api/v1/patients` and `/api/v1/enrolments`: a provider's pseudonymous patients and which
device measures each of them, when.

A provider sees and changes only its own patients and their enrolments (another's are 404,
as missing ones). Reads are audited as `/fhir`'s are. Enrolling, or moving an enrolment's end,
attributes to the patient the device's readings it now covers, serialised with ingest on the
device's row so that no reading is left out or attributed twice.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from ehealthlab.api.auth import ContextDep, ProviderDep
from ehealthlab.api.problems import responses
from ehealthlab.contract.catalogue import device_type
from ehealthlab.errors import ConflictError, InvalidFieldError, NotFoundError
from ehealthlab.gateway import (
    device_registry,
    enrolment_registry,
    organisation_registry,
    patient_registry,
    pseudonyms,
    schemas,
)
from ehealthlab.gateway.audit import audit_read
from ehealthlab.gateway.enrolment_registry import EnrolmentRow
from ehealthlab.gateway.routes_common import AUTH, EnrolmentIdDep, PatientIdDep
from ehealthlab.ingest.alerting import raise_alerts_for
from ehealthlab.store.db import Connection
from ehealthlab.store.readings import attribute_unassigned

router = APIRouter(prefix="/api/v1")


def _enrolment_view(row: EnrolmentRow) -> schemas.Enrolment:
    return schemas.Enrolment(
        id=row.id,
        patient_id=row.patient_id,
        device_id=row.device_id,
        municipality=row.municipality,
        start=row.start_date,
        end=row.end_date,
        care_plan=row.care_plan,
        created_at=row.created_at,
    )


# -- patients -------------------------------------------------------------------------------


@router.post(
    "/patients",
    status_code=201,
    tags=["patients"],
    summary="Register a patient (provider)",
    description="The identifier is stored only as a keyed hash, scoped to the provider. "
    "Registering the same identifier again answers 409 with the existing patient's `id`. "
    "A label holding the identifier or any codice fiscale is refused (422): it is stored in "
    "clear.",
    responses=responses(*AUTH, 409, 422),
)
def register_patient(
    caller: ProviderDep, body: schemas.PatientCreate, context: ContextDep
) -> schemas.PatientCreated:
    problem = pseudonyms.label_problem(body.label, body.identifier)
    if problem is not None:
        raise InvalidFieldError("label", problem)
    digest = pseudonyms.patient_pseudonym(
        context.patient_key, caller.organisation_id, body.identifier
    )
    with context.transaction() as conn:
        patient = patient_registry.insert_patient(conn, caller.organisation_id, digest, body.label)
    return schemas.PatientCreated(id=patient.id)


@router.get(
    "/patients",
    tags=["patients"],
    summary="The provider's patients, with their enrolments",
    responses=responses(*AUTH),
)
def list_patients(caller: ProviderDep, context: ContextDep) -> list[schemas.Patient]:
    with context.transaction() as conn:
        patients = patient_registry.list_patients(conn, caller.organisation_id)
        enrolments = enrolment_registry.list_enrolments(conn, caller.organisation_id)
        ids = [p.id for p in patients]
        audit_read(conn, caller, "Patient", "GET /api/v1/patients", ids, results=len(ids))
    by_patient: dict[UUID, list[schemas.Enrolment]] = {}
    for enrolment in enrolments:
        by_patient.setdefault(enrolment.patient_id, []).append(_enrolment_view(enrolment))
    return [
        schemas.Patient(
            id=p.id, label=p.label, created_at=p.created_at, enrolments=by_patient.get(p.id, [])
        )
        for p in patients
    ]


@router.get(
    "/patients/{patient_id}",
    tags=["patients"],
    summary="One of the provider's patients",
    responses=responses(*AUTH, 404),
)
def get_patient(
    caller: ProviderDep, patient_id: PatientIdDep, context: ContextDep
) -> schemas.Patient:
    with context.transaction() as conn:
        patient = patient_registry.get_patient(conn, patient_id, caller.organisation_id)
        if patient is None:
            raise NotFoundError("no such patient among yours")
        enrolments = enrolment_registry.list_enrolments(conn, caller.organisation_id, [patient_id])
        audit_read(
            conn, caller, "Patient", "GET /api/v1/patients/{id}", [patient.id],
            resource_id=patient.id,
        )  # fmt: skip
    return schemas.Patient(
        id=patient.id,
        label=patient.label,
        created_at=patient.created_at,
        enrolments=[_enrolment_view(e) for e in enrolments],
    )


# -- enrolments -----------------------------------------------------------------------------


@router.post(
    "/enrolments",
    status_code=201,
    tags=["enrolments"],
    summary="Enrol a patient with a device (provider)",
    description="The patient must be the provider's; the device any registered, unrevoked "
    "one (devices are lent to patients). A device serves one patient at a time. Readings "
    "the device sent earlier that the enrolment covers are attributed to the patient now.",
    responses=responses(*AUTH, 404, 409, 422),
)
def enrol(
    caller: ProviderDep, body: schemas.EnrolmentCreate, context: ContextDep
) -> schemas.EnrolmentCreated:
    with context.transaction() as conn:
        if patient_registry.get_patient(conn, body.patient_id, caller.organisation_id) is None:
            raise NotFoundError(f"no patient {body.patient_id} among yours")
        device = device_registry.get_device(conn, body.device_id)
        if device is None:
            raise NotFoundError(f"no device {body.device_id!r}")
        if device.revoked_at is not None:
            raise ConflictError(f"device {body.device_id!r} is revoked")
        if device.simulated != organisation_registry.organisation_is_simulated(
            conn, caller.organisation_id
        ):
            raise InvalidFieldError(
                "device_id",
                f"device {body.device_id!r} is "
                + ("a simulator's: it serves simulated patients only" if device.simulated
                   else "a real device: a simulated provider's patients use simulated ones"),
            )  # fmt: skip
        if not enrolment_registry.municipality_exists(conn, body.municipality):
            raise InvalidFieldError(
                "municipality",
                f"{body.municipality!r} is not the ISTAT code of a municipality of the "
                "Metropolitan City of Turin",
            )
        measured = device_type(device.device_type).metrics
        unmeasured = sorted(set(body.care_plan) - measured)
        if unmeasured:
            raise InvalidFieldError(
                "care_plan",
                f"device {device.device_id!r} is a {device.device_type}, which does not "
                f"measure {', '.join(unmeasured)}; it measures {', '.join(sorted(measured))}",
            )
        _serialise_with_ingest(conn, body.device_id)
        enrolment = enrolment_registry.insert_enrolment(
            conn,
            patient_id=body.patient_id,
            device_id=body.device_id,
            municipality=body.municipality,
            start_date=body.start,
            end_date=body.end,
            care_plan=body.care_plan,
        )
        attributed = attribute_unassigned(conn, enrolment.id)
        raise_alerts_for(conn, attributed, context.alert_rules)
    return schemas.EnrolmentCreated(id=enrolment.id, attributed_readings=len(attributed))


def _serialise_with_ingest(conn: Connection, device_id: str) -> None:
    """Lock the device's row as ingest does for each batch: a batch of its readings and
    this enrolment then see each other, whichever commits first (else a reading could be
    left unassigned, or attributed past a new end, for good). Also lets TimescaleDB
    decompress as much as re-attribution needs."""
    conn.execute("SELECT 1 FROM devices WHERE device_id = %s FOR UPDATE", (device_id,))
    conn.execute("SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0")


@router.get(
    "/enrolments",
    tags=["enrolments"],
    summary="The provider's enrolments",
    responses=responses(*AUTH, 422),
)
def list_enrolments(
    caller: ProviderDep,
    context: ContextDep,
    patient_id: Annotated[UUID | None, Query(description="only this patient's")] = None,
) -> list[schemas.Enrolment]:
    with context.transaction() as conn:
        rows = enrolment_registry.list_enrolments(
            conn, caller.organisation_id, None if patient_id is None else [patient_id]
        )
        request = "GET /api/v1/enrolments" + ("" if patient_id is None else "?patient_id=")
        audit_read(
            conn, caller, "EpisodeOfCare", request, {r.patient_id for r in rows},
            results=len(rows),
        )  # fmt: skip
    return [_enrolment_view(row) for row in rows]


@router.get(
    "/enrolments/{enrolment_id}",
    tags=["enrolments"],
    summary="One of the provider's enrolments",
    responses=responses(*AUTH, 404),
)
def get_enrolment(
    caller: ProviderDep, enrolment_id: EnrolmentIdDep, context: ContextDep
) -> schemas.Enrolment:
    with context.transaction() as conn:
        row = enrolment_registry.get_enrolment(conn, enrolment_id, caller.organisation_id)
        if row is not None:
            audit_read(
                conn, caller, "EpisodeOfCare", "GET /api/v1/enrolments/{id}", [row.patient_id],
                resource_id=enrolment_id,
            )  # fmt: skip
    if row is None:
        raise NotFoundError("no such enrolment among yours")
    return _enrolment_view(row)


@router.post(
    "/enrolments/{enrolment_id}/end",
    tags=["enrolments"],
    summary="End (or move the end of) an enrolment",
    description="`end` is the last day included and may not precede the start. Readings "
    "after it are no longer attributed to the patient; moving it later attributes those "
    "it now covers.",
    responses=responses(*AUTH, 404, 409, 422),
)
def end_enrolment(
    caller: ProviderDep,
    enrolment_id: EnrolmentIdDep,
    body: schemas.EnrolmentEnd,
    context: ContextDep,
) -> schemas.Enrolment:
    with context.transaction() as conn:
        enrolment = enrolment_registry.get_enrolment(
            conn, enrolment_id, caller.organisation_id, lock=True
        )
        if enrolment is None:
            raise NotFoundError("no such enrolment among yours")
        if body.end < enrolment.start_date:
            raise InvalidFieldError(
                "end", f"end {body.end} is before the enrolment's start {enrolment.start_date}"
            )
        _serialise_with_ingest(conn, enrolment.device_id)
        updated = enrolment_registry.set_enrolment_end(conn, enrolment, body.end)
        raise_alerts_for(conn, attribute_unassigned(conn, enrolment.id), context.alert_rules)
    return _enrolment_view(updated)
