"""The registry's SQL: organisations, API tokens, devices, patients and enrolments.

Thin functions over one connection each; the caller owns the transaction. Constraint
violations of the database (a duplicate, an overlapping enrolment) become the platform's
errors here, where they enter, so no psycopg exception travels further.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal, TypeVar
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ehealthlab.errors import ConflictError
from ehealthlab.gateway import tokens
from ehealthlab.store.db import Connection

OrganisationKind = Literal["startup", "provider", "operator"]
TokenRole = Literal["admin", "member"]
DeviceStatus = Literal["online", "offline", "never_seen"]

_Row = TypeVar("_Row")


def _columns(*names: str, table: str | None = None) -> sql.Composed:
    """A column list for SELECT and RETURNING, composed safely (no string formatting)."""
    return sql.SQL(", ").join(
        sql.Identifier(table, name) if table else sql.Identifier(name) for name in names
    )


#: the operator organisation `ehealthlab admin bootstrap` creates
OPERATOR_NAME = "CMTo"


# -- organisations ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrganisationRow:
    id: UUID
    kind: OrganisationKind
    name: str
    created_at: datetime
    simulated: bool = False


_ORGANISATION_COLUMNS = _columns("id", "kind", "name", "created_at", "simulated")


def create_organisation(
    conn: Connection,
    kind: OrganisationKind,
    name: str,
    fls_code: str | None = None,
    *,
    simulated: bool = False,
) -> OrganisationRow:
    try:
        with conn.transaction(), conn.cursor(row_factory=class_row(OrganisationRow)) as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO organisations (kind, name, fls_code, simulated)"
                    " VALUES (%s, %s, %s, %s) RETURNING {cols}"
                ).format(cols=_ORGANISATION_COLUMNS),
                (kind, name, fls_code, simulated),
            )
            return _one(cur.fetchone())
    except psycopg.errors.UniqueViolation:
        raise ConflictError(f"a {kind} organisation named {name!r} already exists") from None


def find_organisation(
    conn: Connection, kind: OrganisationKind, name: str
) -> OrganisationRow | None:
    with conn.cursor(row_factory=class_row(OrganisationRow)) as cur:
        cur.execute(
            sql.SQL("SELECT {cols} FROM organisations WHERE kind = %s AND name = %s").format(
                cols=_ORGANISATION_COLUMNS
            ),
            (kind, name),
        )
        return cur.fetchone()


def get_organisation(conn: Connection, organisation_id: UUID) -> OrganisationRow | None:
    with conn.cursor(row_factory=class_row(OrganisationRow)) as cur:
        cur.execute(
            sql.SQL("SELECT {cols} FROM organisations WHERE id = %s").format(
                cols=_ORGANISATION_COLUMNS
            ),
            (organisation_id,),
        )
        return cur.fetchone()


def list_organisations(conn: Connection) -> list[OrganisationRow]:
    with conn.cursor(row_factory=class_row(OrganisationRow)) as cur:
        cur.execute(
            sql.SQL("SELECT {cols} FROM organisations ORDER BY kind, name").format(
                cols=_ORGANISATION_COLUMNS
            )
        )
        return cur.fetchall()


# -- API tokens -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: UUID
    organisation_id: UUID
    role: TokenRole
    label: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Who a valid token speaks for."""

    token_id: UUID
    organisation_id: UUID
    kind: OrganisationKind
    role: TokenRole
    token_hash: bytes


_TOKEN_COLUMNS = _columns(
    "id", "organisation_id", "role", "label", "created_at", "revoked_at", "last_used_at"
)


def create_token(
    conn: Connection, organisation_id: UUID, role: TokenRole = "admin", label: str = ""
) -> tuple[TokenRow, str]:
    """A new token for an organisation: the row, and the token itself (shown once)."""
    token = tokens.new_token()
    with conn.cursor(row_factory=class_row(TokenRow)) as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO api_tokens (organisation_id, role, token_hash, label)"
                " VALUES (%s, %s, %s, %s) RETURNING {cols}"
            ).format(cols=_TOKEN_COLUMNS),
            (organisation_id, role, tokens.hash_token(token), label),
        )
        return _one(cur.fetchone()), token


# One round trip; `last_used_at` is written at most once a minute per token, so a busy
# client does not turn every request into a write.
_AUTHENTICATE = """
    WITH hit AS (
        SELECT t.id, t.organisation_id, o.kind, t.role, t.token_hash, t.last_used_at
        FROM api_tokens t JOIN organisations o ON o.id = t.organisation_id
        WHERE t.token_hash = %(hash)s AND t.revoked_at IS NULL
    ), touched AS (
        UPDATE api_tokens t SET last_used_at = now() FROM hit
        WHERE t.id = hit.id
          AND (hit.last_used_at IS NULL OR hit.last_used_at < now() - interval '1 minute')
    )
    SELECT id AS token_id, organisation_id, kind, role, token_hash FROM hit
"""


def authenticate(conn: Connection, token_hash: bytes) -> TokenOwner | None:
    """The owner of a valid (known, unrevoked) token, or None."""
    with conn.cursor(row_factory=class_row(TokenOwner)) as cur:
        cur.execute(_AUTHENTICATE, {"hash": token_hash})
        return cur.fetchone()


def revoke_token(conn: Connection, token_id: UUID, organisation_id: UUID | None = None) -> bool:
    """Revoke a token (of `organisation_id` when given); False when there is no such token.

    Revoking twice is not an error: the first revocation time stays.
    """
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())"
        " WHERE id = %s AND (%s::uuid IS NULL OR organisation_id = %s::uuid) RETURNING id",
        (token_id, organisation_id, organisation_id),
    )
    return cur.fetchone() is not None


# -- devices --------------------------------------------------------------------------------


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


_DEVICE_COLUMNS = _columns(
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
            return _one(cur.fetchone())
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


# -- patients -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatientRow:
    id: UUID
    organisation_id: UUID
    label: str
    created_at: datetime


_PATIENT_COLUMNS = _columns("id", "organisation_id", "label", "created_at")


def insert_patient(
    conn: Connection, organisation_id: UUID, identifier_hash: bytes, label: str
) -> PatientRow:
    """A new patient; ConflictError (with the existing `id`) when the provider has one with
    the same identifier already."""
    with conn.cursor(row_factory=class_row(PatientRow)) as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO patients (organisation_id, identifier_hash, label)"
                " VALUES (%s, %s, %s) ON CONFLICT (organisation_id, identifier_hash) DO NOTHING"
                " RETURNING {cols}"
            ).format(cols=_PATIENT_COLUMNS),
            (organisation_id, identifier_hash, label),
        )
        created = cur.fetchone()
        if created is not None:
            return created
        cur.execute(
            sql.SQL(
                "SELECT {cols} FROM patients WHERE organisation_id = %s AND identifier_hash = %s"
            ).format(cols=_PATIENT_COLUMNS),
            (organisation_id, identifier_hash),
        )
        existing = _one(cur.fetchone())
    raise ConflictError(
        f"this patient is already registered (as {existing.label!r})", id=str(existing.id)
    )


def organisation_is_simulated(conn: Connection, organisation_id: UUID) -> bool:
    row = conn.execute(
        "SELECT simulated FROM organisations WHERE id = %s", (organisation_id,)
    ).fetchone()
    return bool(row and row[0])


def get_patient(conn: Connection, patient_id: UUID, organisation_id: UUID) -> PatientRow | None:
    with conn.cursor(row_factory=class_row(PatientRow)) as cur:
        cur.execute(
            sql.SQL("SELECT {cols} FROM patients WHERE id = %s AND organisation_id = %s").format(
                cols=_PATIENT_COLUMNS
            ),
            (patient_id, organisation_id),
        )
        return cur.fetchone()


def list_patients(conn: Connection, organisation_id: UUID) -> list[PatientRow]:
    with conn.cursor(row_factory=class_row(PatientRow)) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {cols} FROM patients WHERE organisation_id = %s ORDER BY created_at, id"
            ).format(cols=_PATIENT_COLUMNS),
            (organisation_id,),
        )
        return cur.fetchall()


# -- enrolments -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrolmentRow:
    id: UUID
    patient_id: UUID
    device_id: str
    municipality: str
    start_date: date
    end_date: date | None
    care_plan: dict[str, int]
    created_at: datetime


_ENROLMENT_COLUMNS = _columns(
    "id", "patient_id", "device_id", "municipality", "start_date", "end_date", "care_plan",
    "created_at", table="e",
)  # fmt: skip


def municipality_exists(conn: Connection, istat_code: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM municipalities WHERE istat_code = %s", (istat_code,)
    ).fetchone()
    return row is not None


def insert_enrolment(
    conn: Connection,
    *,
    patient_id: UUID,
    device_id: str,
    municipality: str,
    start_date: date,
    end_date: date | None,
    care_plan: Mapping[str, int],
) -> EnrolmentRow:
    try:
        with conn.transaction(), conn.cursor(row_factory=class_row(EnrolmentRow)) as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO enrolments AS e (patient_id, device_id, municipality, start_date,"
                    " end_date, care_plan) VALUES (%s, %s, %s, %s, %s, %s)"
                    " RETURNING {cols}"
                ).format(cols=_ENROLMENT_COLUMNS),
                (patient_id, device_id, municipality, start_date, end_date,
                 Jsonb(dict(care_plan))),
            )  # fmt: skip
            return _one(cur.fetchone())
    except psycopg.errors.ExclusionViolation:
        raise _overlap(device_id) from None


def get_enrolment(
    conn: Connection, enrolment_id: UUID, organisation_id: UUID, *, lock: bool = False
) -> EnrolmentRow | None:
    """An enrolment of one of the provider's own patients."""
    query = sql.SQL(
        "SELECT {cols} FROM enrolments e JOIN patients p ON p.id = e.patient_id"
        " WHERE e.id = %s AND p.organisation_id = %s"
    ).format(cols=_ENROLMENT_COLUMNS)
    if lock:
        query += sql.SQL(" FOR UPDATE OF e")
    with conn.cursor(row_factory=class_row(EnrolmentRow)) as cur:
        cur.execute(query, (enrolment_id, organisation_id))
        return cur.fetchone()


def list_enrolments(
    conn: Connection, organisation_id: UUID, patient_ids: list[UUID] | None = None
) -> list[EnrolmentRow]:
    """Enrolments of the provider's patients (of the given patients only, when given)."""
    with conn.cursor(row_factory=class_row(EnrolmentRow)) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {cols} FROM enrolments e"
                " JOIN patients p ON p.id = e.patient_id WHERE p.organisation_id = %s"
                " AND (%s::uuid[] IS NULL OR e.patient_id = ANY(%s::uuid[]))"
                " ORDER BY e.start_date, e.created_at, e.id"
            ).format(cols=_ENROLMENT_COLUMNS),
            (organisation_id, patient_ids, patient_ids),
        )
        return cur.fetchall()


def set_enrolment_end(conn: Connection, enrolment: EnrolmentRow, end_date: date) -> EnrolmentRow:
    """Move an enrolment's end; readings after the new end that it had attributed become
    unassigned again (a later enrolment may claim them)."""
    try:
        with conn.transaction(), conn.cursor(row_factory=class_row(EnrolmentRow)) as cur:
            cur.execute(
                sql.SQL(
                    "UPDATE enrolments e SET end_date = %s WHERE e.id = %s RETURNING {cols}"
                ).format(cols=_ENROLMENT_COLUMNS),
                (end_date, enrolment.id),
            )
            updated = _one(cur.fetchone())
    except psycopg.errors.ExclusionViolation:
        raise _overlap(enrolment.device_id) from None
    conn.execute(
        "UPDATE readings SET patient_id = NULL"
        " WHERE device_id = %(device)s AND patient_id = %(patient)s"
        " AND ehl_pilot_day(measured_at) > %(new_end)s"
        " AND (%(old_end)s::date IS NULL OR ehl_pilot_day(measured_at) <= %(old_end)s::date)",
        {"device": enrolment.device_id, "patient": enrolment.patient_id,
         "new_end": end_date, "old_end": enrolment.end_date},
    )  # fmt: skip
    return updated


def _overlap(device_id: str) -> ConflictError:
    return ConflictError(
        f"device {device_id!r} is already enrolled for an overlapping period: a device serves "
        "one patient at a time (end the other enrolment first)"
    )


def _one(row: _Row | None) -> _Row:
    if row is None:  # RETURNING of a statement that cannot return nothing
        raise RuntimeError("the database returned no row")
    return row
