"""The registry's SQL for patients: a provider's pseudonymous patients.

Thin functions over one connection each; the caller owns the transaction. A patient the
provider has already registered becomes the platform's ConflictError here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import sql
from psycopg.rows import class_row

from ehealthlab.errors import ConflictError
from ehealthlab.gateway.registry_sql import columns, one_row
from ehealthlab.store.db import Connection


@dataclass(frozen=True, slots=True)
class PatientRow:
    id: UUID
    organisation_id: UUID
    label: str
    created_at: datetime


_PATIENT_COLUMNS = columns("id", "organisation_id", "label", "created_at")


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
        existing = one_row(cur.fetchone())
    raise ConflictError(
        f"this patient is already registered (as {existing.label!r})", id=str(existing.id)
    )


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
