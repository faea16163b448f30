"""`/api/v1/devices`: a start-up's devices and their access to the broker.

Registering, rotating and revoking keep the broker's dynamic-security client of the device in
step with its database row, so a device is never half registered: a broker that refuses rolls
the row back, a commit that fails takes the broker's client away again. Reading a device's
status, rejects, messages and conformance is for its own start-up and the operator; another
start-up's device is answered 404 exactly like one that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated

import psycopg
from fastapi import APIRouter, Query, Response

from ehealthlab.api.auth import ContextDep, Principal, StartupDep, StartupOrOperatorDep
from ehealthlab.api.problems import responses
from ehealthlab.contract.topics import feedback_topic, readings_topic, status_topic
from ehealthlab.errors import (
    AuthenticationError,
    ConflictError,
    EhealthlabError,
    InvalidFieldError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from ehealthlab.gateway import device_registry, schemas, tokens
from ehealthlab.gateway.conformance import assess
from ehealthlab.gateway.device_registry import DeviceRow
from ehealthlab.gateway.dynsec import DynamicSecurity, DynsecError
from ehealthlab.gateway.observations import observe
from ehealthlab.gateway.routes_common import AUTH, DeviceIdDep
from ehealthlab.mqtt import BrokerAddress, MqttError
from ehealthlab.settings import Settings
from ehealthlab.store.db import Connection
from ehealthlab.store.rejections import recent_rejections

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1")


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


# -- what a caller is shown of a device -----------------------------------------------------


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


def _visible_device(
    conn: Connection, caller: Principal, device_id: str, *, lock: bool = False
) -> DeviceRow:
    """The device if the caller may see it: its own start-up, or the operator."""
    owner = None if caller.kind == "operator" else caller.organisation_id
    device = device_registry.get_device(conn, device_id, owner, lock=lock)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return device


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
    responses=responses(*AUTH, 409, 422, 503),
)
def register_device(
    caller: StartupDep, body: schemas.DeviceCreate, context: ContextDep
) -> schemas.DeviceCredentials:
    device_id = tokens.new_device_id(body.type)
    password = tokens.new_device_password()
    created_in_broker = False
    try:
        with context.transaction() as conn:
            device_registry.insert_device(
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
    responses=responses(*AUTH),
)
def list_devices(caller: StartupOrOperatorDep, context: ContextDep) -> list[schemas.Device]:
    owner = None if caller.kind == "operator" else caller.organisation_id
    with context.transaction() as conn:
        rows = device_registry.list_devices(conn, owner)
    return [_device_view(row) for row in rows]


@router.get(
    "/devices/{device_id}",
    tags=["devices"],
    summary="One device, with its status and last seen time",
    responses=responses(*AUTH, 404),
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
    responses=responses(*AUTH, 404, 409, 503),
)
def rotate_credentials(
    caller: StartupDep, device_id: DeviceIdDep, context: ContextDep
) -> schemas.DeviceCredentials:
    password = tokens.new_device_password()
    with context.transaction() as conn:
        device = _visible_device(conn, caller, device_id, lock=True)
        if device.revoked_at is not None:
            raise ConflictError(f"device {device_id!r} is revoked; register a new one")
        device_registry.mark_password_set(conn, device_id)
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
    responses=responses(*AUTH, 404, 503),
)
def revoke_device(caller: StartupDep, device_id: DeviceIdDep, context: ContextDep) -> Response:
    with context.transaction() as conn:
        device = _visible_device(conn, caller, device_id, lock=True)
        if device.revoked_at is None:
            device_registry.mark_device_revoked(conn, device_id)
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
    responses=responses(*AUTH, 404, 422),
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
    responses=responses(*AUTH, 404, 422),
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
    responses=responses(*AUTH, 404, 422),
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
