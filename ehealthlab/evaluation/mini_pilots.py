"""Mini-pilots in the store: what CMTo defines and the evaluation groups by (indicators.md).

A mini-pilot is a name, a set of start-ups, a set of municipalities and a date range (both
ends included). Functions take one connection and never commit: inside a transaction they
are part of it (the evaluation lists mini-pilots in its own snapshot, a route commits when
its block ends); only on an autocommit connection outside any transaction does
`create_mini_pilot` open, and end, one of its own, so a mini-pilot is never half written.

Bad references are refused all at once, each named (`InvalidFieldError` with one entry per
bad value, located like request validation's `startups.1`), before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from psycopg import pq

from ehealthlab.errors import ConflictError, InvalidFieldError
from ehealthlab.store.db import Connection

#: longest name a mini-pilot may have (the table's CHECK says the same)
MAX_NAME_LENGTH = 200

_KIND_NAMES = {"provider": "a health provider", "operator": "the operator"}


@dataclass(frozen=True, slots=True)
class MiniPilot:
    """A mini-pilot as stored; `startups` and `municipalities` sorted, each once."""

    id: UUID
    name: str
    startups: tuple[UUID, ...]
    municipalities: tuple[str, ...]
    start: date
    end: date  # included
    created_at: datetime


def create_mini_pilot(
    conn: Connection,
    *,
    name: str,
    startups: Sequence[UUID],
    municipalities: Sequence[str],
    start: date,
    end: date,
) -> MiniPilot:
    """Store a mini-pilot and return it.

    InvalidFieldError names every unacceptable field and reference at once: an empty or too
    long name, no start-ups or municipalities, an id that is no organisation or not a
    start-up's, a code that is no municipality of the reference data, `end` before `start`.
    ConflictError (with the existing `id`) when the name is taken.
    """
    problems = _problems(
        conn, name=name, startups=startups, municipalities=municipalities, start=start, end=end
    )
    if problems:
        raise InvalidFieldError(*problems[0], also=problems[1:])
    with _atomic(conn):
        # ON CONFLICT rather than catching the unique violation: nothing fails inside the
        # caller's transaction, which therefore needs no savepoint and stays usable
        row = conn.execute(
            "INSERT INTO mini_pilots (name, start_date, end_date) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING RETURNING id",
            (name, start, end),
        ).fetchone()
        if row is None:
            existing = conn.execute("SELECT id FROM mini_pilots WHERE name = %s", (name,))
            found = existing.fetchone()
            raise ConflictError(
                f"a mini-pilot named {name!r} already exists",
                id=str(found[0]) if found is not None else None,
            )
        pilot_id: UUID = row[0]
        conn.execute(
            "INSERT INTO mini_pilot_startups (mini_pilot_id, organisation_id)"
            " SELECT %s, unnest(%s::uuid[])",
            (pilot_id, list(dict.fromkeys(startups))),
        )
        conn.execute(
            "INSERT INTO mini_pilot_municipalities (mini_pilot_id, istat_code)"
            " SELECT %s, unnest(%s::text[])",
            (pilot_id, list(dict.fromkeys(municipalities))),
        )
        created = get_mini_pilot(conn, pilot_id)
    if created is None:  # just inserted in this transaction
        raise RuntimeError("the database lost a mini-pilot it had just stored")
    return created


def list_mini_pilots(conn: Connection) -> list[MiniPilot]:
    """Every mini-pilot, by start date, then name."""
    return [_pilot(row) for row in conn.execute(_SELECT + " ORDER BY m.start_date, m.name")]


def get_mini_pilot(conn: Connection, mini_pilot_id: UUID) -> MiniPilot | None:
    """One mini-pilot, or None when there is none with this id."""
    row = conn.execute(_SELECT + " WHERE m.id = %s", (mini_pilot_id,)).fetchone()
    return None if row is None else _pilot(row)


_SELECT = (
    "SELECT m.id, m.name,"
    " ARRAY(SELECT s.organisation_id FROM mini_pilot_startups s"
    "       WHERE s.mini_pilot_id = m.id ORDER BY s.organisation_id),"
    " ARRAY(SELECT x.istat_code FROM mini_pilot_municipalities x"
    "       WHERE x.mini_pilot_id = m.id ORDER BY x.istat_code),"
    " m.start_date, m.end_date, m.created_at"
    " FROM mini_pilots m"
)


def _pilot(row: tuple[Any, ...]) -> MiniPilot:
    pilot_id, name, startups, municipalities, start, end, created_at = row
    return MiniPilot(
        id=pilot_id,
        name=name,
        startups=tuple(startups),
        municipalities=tuple(municipalities),
        start=start,
        end=end,
        created_at=created_at,
    )


def _problems(
    conn: Connection,
    *,
    name: str,
    startups: Sequence[UUID],
    municipalities: Sequence[str],
    start: date,
    end: date,
) -> list[tuple[str, str]]:
    """(field, message) for each thing wrong, in the order of the request's fields."""
    found: list[tuple[str, str]] = []
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        found.append(("name", f"give a name of 1 to {MAX_NAME_LENGTH} characters"))
    if not startups:
        found.append(("startups", "name at least one start-up"))
    kinds: dict[UUID, str] = {
        organisation_id: kind
        for organisation_id, kind in conn.execute(
            "SELECT id, kind FROM organisations WHERE id = ANY(%s::uuid[])", (list(startups),)
        )
    }
    for index, organisation_id in enumerate(startups):
        kind = kinds.get(organisation_id)
        if kind is None:
            found.append((f"startups.{index}", f"no organisation {organisation_id}"))
        elif kind != "startup":
            found.append(
                (
                    f"startups.{index}",
                    f"organisation {organisation_id} is {_KIND_NAMES.get(kind, kind)}, "
                    "not a start-up",
                )
            )
    if not municipalities:
        found.append(("municipalities", "name at least one municipality"))
    known = {
        code
        for (code,) in conn.execute(
            "SELECT istat_code FROM municipalities WHERE istat_code = ANY(%s::text[])",
            (list(municipalities),),
        )
    }
    for index, code in enumerate(municipalities):
        if code not in known:
            found.append(
                (
                    f"municipalities.{index}",
                    f"{code!r} is not the ISTAT code of a municipality of the Metropolitan "
                    "City of Turin",
                )
            )
    if end < start:
        found.append(("end", f"end {end} is before start {start} (both days are included)"))
    return found


def _atomic(conn: Connection) -> AbstractContextManager[Any]:
    """The caller's transaction when there is one (never committed here); a transaction of
    its own only on an autocommit connection outside any."""
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        return conn.transaction()
    return nullcontext()
