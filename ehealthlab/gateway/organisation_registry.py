"""The registry's SQL for organisations: who takes part (start-ups, providers, the operator).

Thin functions over one connection each; the caller owns the transaction. A duplicate name
becomes the platform's ConflictError here, where it enters, so no psycopg exception travels
further.
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

OrganisationKind = Literal["startup", "provider", "operator"]

#: the operator organisation `ehealthlab admin bootstrap` creates
OPERATOR_NAME = "CMTo"


@dataclass(frozen=True, slots=True)
class OrganisationRow:
    id: UUID
    kind: OrganisationKind
    name: str
    created_at: datetime
    simulated: bool = False


_ORGANISATION_COLUMNS = columns("id", "kind", "name", "created_at", "simulated")


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
            return one_row(cur.fetchone())
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


def organisation_is_simulated(conn: Connection, organisation_id: UUID) -> bool:
    row = conn.execute(
        "SELECT simulated FROM organisations WHERE id = %s", (organisation_id,)
    ).fetchone()
    return bool(row and row[0])
