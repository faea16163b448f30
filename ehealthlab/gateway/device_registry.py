"""The registry's SQL for devices: a start-up's registered devices, their revocation,
MQTT password and last reported status.

Thin functions over one connection each; the caller owns the transaction. A duplicate device
(its id, or its model and serial) becomes the platform's ConflictError here, where it enters,
so no psycopg exception travels further.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from ehealthlab.errors import ConflictError
from ehealthlab.gateway.registry_sql import columns, one_row
from ehealthlab.store.db import Connection

DeviceStatus = Literal["online", "offline", "never_seen"]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    organisation_id: UUID
    device_type: str
    model: str
    serial: str
    firmware: str | None
    simulated: bool
    created_at: datetime
    revoked_at: datetime | None
    status: DeviceStatus
    status_at: datetime | None
    last_seen_at: datetime | None
    password_set_at: datetime | None


_DEVICE_COLUMNS = columns(
    "device_id", "organisation_id", "device_type", "model", "serial", "firmware", "simulated",
    "created_at", "revoked_at", "status", "status_at", "last_seen_at", "password_set_at",
)  # fmt: skip


def insert_device(
    conn: Connection,
    *,
    organisation_id: UUID,
    device_id: str,
    device_type: str,
    model: str,
    serial: str,
    firmware: str | None,
) -> DeviceRow:
    """A start-up's new device; simulated when the operator admitted the start-up as one."""
    try:
        with conn.transaction(), conn.cursor(row_factory=class_row(DeviceRow)) as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO devices (device_id, organisation_id, device_type, model, serial,"
                    " firmware, simulated, password_set_at)"
                    " SELECT %s, o.id, %s, %s, %s, %s, o.simulated, now()"
                    " FROM organisations o WHERE o.id = %s RETURNING {cols}"
                ).format(cols=_DEVICE_COLUMNS),
                (device_id, device_type, model, serial, firmware, organisation_id),
            )
            return one_row(cur.fetchone())
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "devices_pkey":
            raise ConflictError(f"device id {device_id!r} is taken; try again") from None
        existing = conn.execute(
            "SELECT device_id FROM devices WHERE organisation_id = %s AND model = %s"
            " AND serial = %s",
            (organisation_id, model, serial),
        ).fetchone()
        raise ConflictError(
            f"a device of model {model!r} with serial {serial!r} is already registered",
            device_id=existing[0] if existing else None,
        ) from None


def get_device(
    conn: Connection, device_id: str, organisation_id: UUID | None = None, *, lock: bool = False
) -> DeviceRow | None:
    """A device, only if it belongs to `organisation_id` when one is given."""
    query = sql.SQL(
        "SELECT {cols} FROM devices WHERE device_id = %s"
        " AND (%s::uuid IS NULL OR organisation_id = %s::uuid)"
    ).format(cols=_DEVICE_COLUMNS)
    if lock:
        query += sql.SQL(" FOR UPDATE")
    with conn.cursor(row_factory=class_row(DeviceRow)) as cur:
        cur.execute(query, (device_id, organisation_id, organisation_id))
        return cur.fetchone()


def list_devices(conn: Connection, organisation_id: UUID | None = None) -> list[DeviceRow]:
    """Devices of one organisation, or all of them (the operator)."""
    with conn.cursor(row_factory=class_row(DeviceRow)) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {cols} FROM devices"
                " WHERE (%s::uuid IS NULL OR organisation_id = %s::uuid)"
                " ORDER BY created_at, device_id"
            ).format(cols=_DEVICE_COLUMNS),
            (organisation_id, organisation_id),
        )
        return cur.fetchall()


def mark_device_revoked(conn: Connection, device_id: str) -> None:
    conn.execute(
        "UPDATE devices SET revoked_at = coalesce(revoked_at, now()) WHERE device_id = %s",
        (device_id,),
    )


def mark_password_set(conn: Connection, device_id: str) -> None:
    conn.execute("UPDATE devices SET password_set_at = now() WHERE device_id = %s", (device_id,))


# A live message is news: it sets the status and its time and counts as the device being
# seen. A retained one is delivered again on every (re)subscription, so it sets the status
# but keeps the earlier times when nothing changed.
_RECORD_STATUS = """
    UPDATE devices SET
        status = coalesce(%(state)s::text, status),
        status_at = CASE
            WHEN %(state)s::text IS NULL THEN status_at
            WHEN %(retained)s AND status = %(state)s::text AND status_at IS NOT NULL
                THEN status_at
            ELSE %(at)s END,
        last_seen_at = CASE
            WHEN %(retained)s THEN coalesce(last_seen_at, %(at)s)
            ELSE greatest(last_seen_at, %(at)s) END
    WHERE device_id = %(device)s
    RETURNING device_id
"""


def record_status(
    conn: Connection,
    device_id: str,
    state: Literal["online", "offline"] | None,
    *,
    retained: bool,
    payload: bytes,
    received_at: datetime,
) -> bool:
    """Record a status message of a registered device (state None: unreadable payload,
    kept as an `invalid` event for the conformance check); False for an unknown device."""
    params = {"state": state, "retained": retained, "at": received_at, "device": device_id}
    if conn.execute(_RECORD_STATUS, params).fetchone() is None:
        return False
    conn.execute(
        "INSERT INTO device_status_events (device_id, received_at, status, retained, payload)"
        " VALUES (%s, %s, %s, %s, %s)",
        (device_id, received_at, state or "invalid", retained, payload),
    )
    return True
