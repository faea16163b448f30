"""What the registry's SQL modules share: column lists composed safely, and the one row a
RETURNING must give.

The registry of /api/v1 is one module per resource: organisation_registry.py,
token_registry.py, device_registry.py, patient_registry.py and enrolment_registry.py.
"""

from __future__ import annotations

from typing import TypeVar

from psycopg import sql

_Row = TypeVar("_Row")


def columns(*names: str, table: str | None = None) -> sql.Composed:
    """A column list for SELECT and RETURNING, composed safely (no string formatting)."""
    return sql.SQL(", ").join(
        sql.Identifier(table, name) if table else sql.Identifier(name) for name in names
    )


def one_row(row: _Row | None) -> _Row:
    if row is None:  # RETURNING of a statement that cannot return nothing
        raise RuntimeError("the database returned no row")
    return row
