"""The gateway's HTTP routes under /api/v1: organisations, devices, patients, enrolments.

Handlers stay thin: validate (schemas), check who may see what (auth), call the registry in
one transaction, and, for devices, keep the broker's dynamic-security clients in step with
the database. Another organisation's device, patient or enrolment is answered 404 exactly
like one that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Query, Response

from ehealthlab.api.auth import (
    ContextDep,
    OperatorDep,
    Principal,
    PrincipalDep,
    ProviderDep,
    ProviderOrOperatorDep,
    StartupDep,
    StartupOrOperatorDep,
)
from ehealthlab.api.problems import responses
from ehealthlab.contract.catalogue import device_type
from ehealthlab.contract.topics import (
    feedback_topic,
    is_valid_device_id,
    readings_topic,
    status_topic,
)
from ehealthlab.errors import (
    AuthenticationError,
    ConflictError,
    EhealthlabError,
    InvalidFieldError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from ehealthlab.gateway import pseudonyms, registry, schemas, tokens
from ehealthlab.gateway.audit import audit_read
from ehealthlab.gateway.conformance import assess
from ehealthlab.gateway.dynsec import DynamicSecurity, DynsecError
from ehealthlab.gateway.observations import observe
from ehealthlab.gateway.registry import DeviceRow, EnrolmentRow
from ehealthlab.ingest.alerting import raise_alerts_for
from ehealthlab.mqtt import BrokerAddress, MqttError
from ehealthlab.settings import Settings
from ehealthlab.store import alerts as store_alerts
from ehealthlab.store.alerts import StoredAlert
from ehealthlab.store.db import Connection
from ehealthlab.store.readings import attribute_unassigned
from ehealthlab.store.rejections import recent_rejections

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1")

_AUTH = (401, 403)


# -- path parameters: anything invalid is simply not found ---------------------------------


def _device_id(device_id: str) -> str:
    # checked before any lookup, so `/`, `+` and `#` never reach a topic or a query
    if not is_valid_device_id(device_id):
        raise NotFoundError("no such device")
    return device_id


def _uuid_in_path(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotFoundError(f"no such {what}") from None


def _enrolment_id(enrolment_id: str) -> UUID:
    return _uuid_in_path(enrolment_id, "enrolment")


def _patient_id(patient_id: str) -> UUID:
    return _uuid_in_path(patient_id, "patient")


DeviceIdDep = Annotated[str, Depends(_device_id)]
EnrolmentIdDep = Annotated[UUID, Depends(_enrolment_id)]
PatientIdDep = Annotated[UUID, Depends(_patient_id)]


def _alert_id(alert_id: str) -> UUID:
    return _uuid_in_path(alert_id, "alert")


AlertIdDep = Annotated[UUID, Depends(_alert_id)]


# -- the broker's dynamic security ---------------------------------------------------------


@contextmanager
def _dynsec(broker: BrokerAddress) -> Iterator[DynamicSecurity]:
    """An administrative broker connection for one operation; any refusal or silence of the
    broker is a 503 (never a 401/403 meant for the API caller).

    Registrations are rare, so a fresh connection each time is cheap and survives broker
    restarts without reconnection logic.
    """
    try:
        with DynamicSecurity(broker) as dynsec:
            yield dynsec
    except (DynsecError, MqttError, AuthenticationError, PermissionDeniedError) as exc:
        raise ServiceUnavailableError(f"the MQTT broker did not complete it: {exc}") from exc


def _credentials(settings: Settings, device_id: str, password: str) -> schemas.DeviceCredentials:
    host, port, tls = settings.device_broker()  # the public address, not the platform's
    return schemas.DeviceCredentials(
        device_id=device_id,
        mqtt=schemas.MqttCredentials(
            host=host,
            port=port,
            tls=tls,
            username=device_id,
            password=password,
            client_id=device_id,
            topics=schemas.MqttTopics(
                readings=readings_topic(device_id),
                status=status_topic(device_id),
                feedback=feedback_topic(device_id),
            ),
        ),
    )


def _device_view(row: DeviceRow) -> schemas.Device:
    return schemas.Device(
        device_id=row.device_id,
        organisation_id=row.organisation_id,
        type=row.device_type,
        model=row.model,
        serial=row.serial,
        firmware=row.firmware,
        simulated=row.simulated,
        created_at=row.created_at,
        revoked=row.revoked_at is not None,
        revoked_at=row.revoked_at,
        status=row.status,
        status_at=row.status_at,
        last_seen=row.last_seen_at,
        credentials_set_at=row.password_set_at,
    )


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


def _visible_device(
    conn: Connection, caller: Principal, device_id: str, *, lock: bool = False
) -> DeviceRow:
    """The device if the caller may see it: its own start-up, or the operator."""
    owner = None if caller.kind == "operator" else caller.organisation_id
    device = registry.get_device(conn, device_id, owner, lock=lock)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return device


# -- organisations ------------------------------------------------------------------------


@router.post(
    "/organisations",
    status_code=201,
    tags=["organisations"],
    summary="Admit an organisation (operator)",
    description="Creates a start-up, health provider or operator organisation and its first "
    "API token (admin role). The token is shown only in this response.",
    responses=responses(*_AUTH, 409, 422),
)
def create_organisation(
    caller: OperatorDep, body: schemas.OrganisationCreate, context: ContextDep
) -> schemas.OrganisationCreated:
    with context.transaction() as conn:
        organisation = registry.create_organisation(
            conn, body.kind, body.name, body.fls_code, simulated=body.simulated
        )
        token_row, token = registry.create_token(conn, organisation.id, "admin", "first token")
    return schemas.OrganisationCreated(
        id=organisation.id,
        kind=organisation.kind,
        name=organisation.name,
        token_id=token_row.id,
        token=token,
    )


@router.get(
    "/organisations",
    tags=["organisations"],
    summary="List organisations (operator)",
    responses=responses(*_AUTH),
)
def list_organisations(caller: OperatorDep, context: ContextDep) -> list[schemas.Organisation]:
    with context.transaction() as conn:
        rows = registry.list_organisations(conn)
    return [
        schemas.Organisation(
            id=r.id, kind=r.kind, name=r.name, created_at=r.created_at, simulated=r.simulated
        )
        for r in rows
    ]


@router.get(
    "/me",
    tags=["organisations"],
    summary="Whom this token speaks for",
    responses=responses(401),
)
def whoami(caller: PrincipalDep, context: ContextDep) -> schemas.Me:
    with context.transaction() as conn:
        organisation = registry.get_organisation(conn, caller.organisation_id)
    if organisation is None:  # the token's organisation cannot vanish (foreign key)
        raise NotFoundError("no such organisation")
    return schemas.Me(
        organisation_id=organisation.id,
        kind=organisation.kind,
        name=organisation.name,
        role=caller.role,
        token_id=caller.token_id,
    )


# -- devices --------------------------------------------------------------------------------


@router.post(
    "/devices",
    status_code=201,
    tags=["devices"],
    summary="Register a device (start-up)",
    description="Registers a device of a catalogue type and creates its MQTT client in the "
    "broker: client id and username are the device id, and the device may publish only its "
    "own readings and status and subscribe only to its own feedback. The password is shown "
    "only in this response.",
    responses=responses(*_AUTH, 409, 422, 503),
)
def register_device(
    caller: StartupDep, body: schemas.DeviceCreate, context: ContextDep
) -> schemas.DeviceCredentials:
    device_id = tokens.new_device_id(body.type)
    password = tokens.new_device_password()
    created_in_broker = False
    try:
        with context.transaction() as conn:
            registry.insert_device(
                conn,
                organisation_id=caller.organisation_id,
                device_id=device_id,
                device_type=body.type,
                model=body.model,
                serial=body.serial,
                firmware=body.firmware,
            )
            with _dynsec(context.broker) as dynsec:
                dynsec.create_device_client(device_id, password)
                created_in_broker = True
    except (EhealthlabError, psycopg.Error):
        # the broker refused: the row was rolled back with the transaction; the commit
        # failed: take the broker's client away again, so nothing is half registered
        if created_in_broker:
            _forget_broker_client(context.broker, device_id)
        raise
    return _credentials(context.settings, device_id, password)


def _forget_broker_client(broker: BrokerAddress, device_id: str) -> None:
    try:
        with _dynsec(broker) as dynsec:
            dynsec.delete_device_client(device_id)
    except ServiceUnavailableError:
        log.exception("device %s: MQTT client left in the broker without a database row", device_id)


@router.get(
    "/devices",
    tags=["devices"],
    summary="List devices (start-up: its own; operator: all)",
    responses=responses(*_AUTH),
)
def list_devices(caller: StartupOrOperatorDep, context: ContextDep) -> list[schemas.Device]:
    owner = None if caller.kind == "operator" else caller.organisation_id
    with context.transaction() as conn:
        rows = registry.list_devices(conn, owner)
    return [_device_view(row) for row in rows]


@router.get(
    "/devices/{device_id}",
    tags=["devices"],
    summary="One device, with its status and last seen time",
    responses=responses(*_AUTH, 404),
)
def get_device(
    caller: StartupOrOperatorDep, device_id: DeviceIdDep, context: ContextDep
) -> schemas.Device:
    with context.transaction() as conn:
        return _device_view(_visible_device(conn, caller, device_id))


@router.post(
    "/devices/{device_id}/credentials",
    tags=["devices"],
    summary="Rotate a device's password (start-up)",
    description="Sets a new MQTT password, shown only in this response. The old one stops "
    "working at once and a live connection made with it is dropped.",
    responses=responses(*_AUTH, 404, 409, 503),
)
def rotate_credentials(
    caller: StartupDep, device_id: DeviceIdDep, context: ContextDep
) -> schemas.DeviceCredentials:
    password = tokens.new_device_password()
    with context.transaction() as conn:
        device = _visible_device(conn, caller, device_id, lock=True)
        if device.revoked_at is not None:
            raise ConflictError(f"device {device_id!r} is revoked; register a new one")
        registry.mark_password_set(conn, device_id)
        with _dynsec(context.broker) as dynsec:
            dynsec.set_password(device_id, password)  # drops a connection with the old one
    return _credentials(context.settings, device_id, password)


@router.delete(
    "/devices/{device_id}",
    status_code=204,
    response_class=Response,
    tags=["devices"],
    summary="Revoke a device (start-up)",
    description="Deletes the device's MQTT client: a live connection is dropped and it can "
    "no longer connect or publish. Its readings stay. Revoking twice is harmless.",
    responses=responses(*_AUTH, 404, 503),
)
def revoke_device(caller: StartupDep, device_id: DeviceIdDep, context: ContextDep) -> Response:
    with context.transaction() as conn:
        device = _visible_device(conn, caller, device_id, lock=True)
        if device.revoked_at is None:
            registry.mark_device_revoked(conn, device_id)
            with _dynsec(context.broker) as dynsec:
                # absent after a revocation whose database commit failed: finish it
                if dynsec.get_client(device_id) is not None:
                    dynsec.delete_device_client(device_id)
    return Response(status_code=204)


@router.get(
    "/devices/{device_id}/rejects",
    tags=["devices"],
    summary="A device's recent rejected readings, newest first",
    description="What ingest refused and why (a reason code of the device contract).",
    responses=responses(*_AUTH, 404, 422),
)
def device_rejects(
    caller: StartupOrOperatorDep,
    device_id: DeviceIdDep,
    context: ContextDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 100,
) -> list[schemas.Reject]:
    with context.transaction() as conn:
        _visible_device(conn, caller, device_id)
        rows = recent_rejections(conn, device_id, limit)
    return [
        schemas.Reject(
            received_at=r.received_at,
            reason=r.reason,
            detail=r.detail,
            seq=r.seq,
            msg_id=r.msg_id,
            index=r.item_index,
            metric=r.metric,
            at=r.at,
        )
        for r in rows
    ]


@router.get(
    "/devices/{device_id}/messages",
    tags=["devices"],
    summary="A device's recent readings messages, newest first",
    description="What ingest made of each message: how many readings were stored, already "
    "there (duplicates) or rejected. The quickest way to see a reading accepted.",
    responses=responses(*_AUTH, 404, 422),
)
def device_messages(
    caller: StartupOrOperatorDep,
    device_id: DeviceIdDep,
    context: ContextDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 20,
) -> list[schemas.ReceivedMessage]:
    with context.transaction() as conn:
        _visible_device(conn, caller, device_id)
        rows = conn.execute(
            "SELECT received_at, msg_id, qos, readings, accepted, duplicates, rejected,"
            " clock_offset_s FROM device_messages WHERE device_id = %s"
            " ORDER BY received_at DESC, id DESC LIMIT %s",
            (device_id, limit),
        ).fetchall()
    fields = list(schemas.ReceivedMessage.model_fields)
    return [schemas.ReceivedMessage(**dict(zip(fields, row, strict=True))) for row in rows]


@router.get(
    "/devices/{device_id}/conformance",
    tags=["devices"],
    summary="Conformance check of a device over a window",
    description="Judges what the device sent in [from, to) — by default the last `minutes` "
    "minutes — against the device contract, point by point: credentials and client id, "
    "topic, schema, metrics, units, clock, seq continuity, QoS 1, status and Last Will, "
    "backlog, duplicates; each with what was seen and what to change. `ehealthlab "
    "conformance DEVICE_ID --minutes N` watches the device for N minutes, then asks this.",
    responses=responses(*_AUTH, 404, 422),
)
def device_conformance(
    *,
    caller: StartupOrOperatorDep,
    device_id: DeviceIdDep,
    context: ContextDep,
    minutes: Annotated[float, Query(gt=0, le=7 * 24 * 60, description="the last N minutes")] = 60,
    from_: Annotated[datetime | None, Query(alias="from", description="window start")] = None,
    to: Annotated[datetime | None, Query(description="window end (default now)")] = None,
) -> schemas.ConformanceReport:
    until = to or datetime.now(UTC)
    since = from_ or until - timedelta(minutes=minutes)
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidFieldError("from", "give times with their UTC offset")
    if since >= until:
        raise InvalidFieldError("from", "the window must start before it ends")
    with context.transaction() as conn:
        _visible_device(conn, caller, device_id)
        report = assess(observe(conn, device_id, since, until))
    return schemas.ConformanceReport(
        device_id=report.device_id,
        window_from=report.window_from,
        window_to=report.window_to,
        verdict=report.verdict,
        checks=[schemas.ConformanceCheck(**vars(check)) for check in report.checks],
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
    responses=responses(*_AUTH, 409, 422),
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
        patient = registry.insert_patient(conn, caller.organisation_id, digest, body.label)
    return schemas.PatientCreated(id=patient.id)


@router.get(
    "/patients",
    tags=["patients"],
    summary="The provider's patients, with their enrolments",
    responses=responses(*_AUTH),
)
def list_patients(caller: ProviderDep, context: ContextDep) -> list[schemas.Patient]:
    with context.transaction() as conn:
        patients = registry.list_patients(conn, caller.organisation_id)
        enrolments = registry.list_enrolments(conn, caller.organisation_id)
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
    responses=responses(*_AUTH, 404),
)
def get_patient(
    caller: ProviderDep, patient_id: PatientIdDep, context: ContextDep
) -> schemas.Patient:
    with context.transaction() as conn:
        patient = registry.get_patient(conn, patient_id, caller.organisation_id)
        if patient is None:
            raise NotFoundError("no such patient among yours")
        enrolments = registry.list_enrolments(conn, caller.organisation_id, [patient_id])
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
    responses=responses(*_AUTH, 404, 409, 422),
)
def enrol(
    caller: ProviderDep, body: schemas.EnrolmentCreate, context: ContextDep
) -> schemas.EnrolmentCreated:
    with context.transaction() as conn:
        if registry.get_patient(conn, body.patient_id, caller.organisation_id) is None:
            raise NotFoundError(f"no patient {body.patient_id} among yours")
        device = registry.get_device(conn, body.device_id)
        if device is None:
            raise NotFoundError(f"no device {body.device_id!r}")
        if device.revoked_at is not None:
            raise ConflictError(f"device {body.device_id!r} is revoked")
        if device.simulated != registry.organisation_is_simulated(conn, caller.organisation_id):
            raise InvalidFieldError(
                "device_id",
                f"device {body.device_id!r} is "
                + ("a simulator's: it serves simulated patients only" if device.simulated
                   else "a real device: a simulated provider's patients use simulated ones"),
            )  # fmt: skip
        if not registry.municipality_exists(conn, body.municipality):
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
        enrolment = registry.insert_enrolment(
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
    responses=responses(*_AUTH, 422),
)
def list_enrolments(
    caller: ProviderDep,
    context: ContextDep,
    patient_id: Annotated[UUID | None, Query(description="only this patient's")] = None,
) -> list[schemas.Enrolment]:
    with context.transaction() as conn:
        rows = registry.list_enrolments(
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
    responses=responses(*_AUTH, 404),
)
def get_enrolment(
    caller: ProviderDep, enrolment_id: EnrolmentIdDep, context: ContextDep
) -> schemas.Enrolment:
    with context.transaction() as conn:
        row = registry.get_enrolment(conn, enrolment_id, caller.organisation_id)
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
    responses=responses(*_AUTH, 404, 409, 422),
)
def end_enrolment(
    caller: ProviderDep,
    enrolment_id: EnrolmentIdDep,
    body: schemas.EnrolmentEnd,
    context: ContextDep,
) -> schemas.Enrolment:
    with context.transaction() as conn:
        enrolment = registry.get_enrolment(conn, enrolment_id, caller.organisation_id, lock=True)
        if enrolment is None:
            raise NotFoundError("no such enrolment among yours")
        if body.end < enrolment.start_date:
            raise InvalidFieldError(
                "end", f"end {body.end} is before the enrolment's start {enrolment.start_date}"
            )
        _serialise_with_ingest(conn, enrolment.device_id)
        updated = registry.set_enrolment_end(conn, enrolment, body.end)
        raise_alerts_for(conn, attribute_unassigned(conn, enrolment.id), context.alert_rules)
    return _enrolment_view(updated)


# -- alerts ---------------------------------------------------------------------------------


def _alert_view(alert: StoredAlert) -> schemas.Alert:
    return schemas.Alert(
        id=alert.id,
        patient_id=alert.patient_id,
        rule=alert.rule,
        day=alert.day,
        raised_at=alert.raised_at,
        acknowledged_at=alert.acknowledged_at,
        reading=schemas.AlertReading(
            device_id=alert.device_id,
            metric=alert.metric,
            value=alert.value,
            at=alert.at,
            measured_at=alert.measured_at,
        ),
    )


@router.get(
    "/alerts",
    tags=["alerts"],
    summary="Clinical alerts: a provider's own patients', or all for the operator",
    description="Newest first. `status=open` lists those not acknowledged yet.",
    responses=responses(*_AUTH, 422),
)
def list_alerts(
    caller: ProviderOrOperatorDep,
    context: ContextDep,
    status: Annotated[Literal["open", "all"], Query(description="open or all")] = "all",
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 200,
) -> list[schemas.Alert]:
    organisation = None if caller.kind == "operator" else caller.organisation_id
    with context.transaction() as conn:
        rows = store_alerts.list_alerts(conn, organisation, only_open=status == "open", limit=limit)
        audit_read(
            conn, caller, "Flag", f"GET /api/v1/alerts?status={status}&limit={limit}",
            {r.patient_id for r in rows}, results=len(rows),
        )  # fmt: skip
    return [_alert_view(row) for row in rows]


@router.post(
    "/alerts/{alert_id}/ack",
    tags=["alerts"],
    summary="Acknowledge an alert of one of the provider's patients",
    description="Idempotent: the first acknowledgement's time stays, from which the response "
    "time is measured.",
    responses=responses(*_AUTH, 404),
)
def acknowledge_alert(
    caller: ProviderDep, alert_id: AlertIdDep, context: ContextDep
) -> schemas.Alert:
    with context.transaction() as conn:
        row = store_alerts.acknowledge_alert(
            conn, alert_id, caller.organisation_id, caller.token_id
        )
    if row is None:
        raise NotFoundError("no such alert among your patients'")
    return _alert_view(row)
