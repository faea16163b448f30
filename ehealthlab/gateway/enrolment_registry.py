"""The registry's SQL for enrolments: which device measures which patient, when.

Thin functions over one connection each; the caller owns the transaction. An overlapping
enrolment (the database's exclusion constraint) becomes the platform's ConflictError here,
where it enters, so no psycopg exception travels further.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ehealthlab.errors import ConflictError
from ehealthlab.gateway.registry_sql import columns, one_row
from ehealthlab.store.db import Connection


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


_ENROLMENT_COLUMNS = columns(
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
            return one_row(cur.fetchone())
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
            updated = one_row(cur.fetchone())
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
