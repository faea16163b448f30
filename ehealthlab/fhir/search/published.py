"""Reads and searches of what the platform publishes for every token, confined to no tenant:
the SUS Questionnaire and the indicators' Measures (no SQL: they are the code's), and the
Groups MeasureReports are about (a look-up for those the store names). MeasureReports, one
row per group of the current evaluations, are a table of tables.py (measure_reports.py).

Each function returns a `Statement` (sql.py), as tables.py's do, so the read and search
handlers (rest/interactions.py) treat these types like any other. The records of the
Questionnaire and of Measures are their JSON already.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.mapping.rows import GroupRecord
from ehealthlab.fhir.measures.definitions import MEASURES
from ehealthlab.fhir.measures.groups import parse_group_id, static_group
from ehealthlab.fhir.questionnaires.sus import SUS_ID, questionnaire_json
from ehealthlab.fhir.search.criteria import Clause, SearchParameterError
from ehealthlab.fhir.search.cursors import Cursor
from ehealthlab.fhir.search.sql import Page, Statement, fetches_descending, page_of

#: the types served here
TYPES = frozenset({"Questionnaire", "Measure", "Group"})

Json = dict[str, Any]


def read(resource_type: str, resource_id: str, tenant: Tenant) -> Statement[Any | None]:
    """The record of a published resource (the JSON of a Questionnaire or Measure), or
    None when there is none with this id."""
    if resource_type == "Questionnaire":
        return Statement.answer(questionnaire_json() if resource_id == SUS_ID else None)
    if resource_type == "Measure":
        return Statement.answer(MEASURES.get(resource_id))
    if resource_type == "Group":
        return _group(resource_id)
    raise NotImplementedError(f"read of {resource_type}")


def _group(group_id: str) -> Statement[GroupRecord | None]:
    parsed = parse_group_id(group_id)
    if parsed is None:
        return Statement.answer(None)
    grouping, key = parsed
    known = static_group(grouping, key)
    if known is not None:
        return Statement.answer(known)
    queries = {
        "snai_class": "SELECT 'SNAI class ' || snai_class_label FROM municipalities"
        " WHERE snai_class = %(key)s LIMIT 1",
        "startup": "SELECT name FROM organisations WHERE id = %(key)s AND kind = 'startup'",
        "mini_pilot": "SELECT name FROM mini_pilots WHERE id = %(key)s",
    }
    value: Any = UUID(key) if grouping in ("startup", "mini_pilot") else key

    def record(rows: list[tuple[Any, ...]]) -> GroupRecord | None:
        return GroupRecord(group_id, grouping, key, str(rows[0][0])) if rows else None

    return Statement(queries[grouping], {"key": value}, record)


def _matching(resource_type: str, clauses: Sequence[Clause]) -> list[Json]:
    if resource_type != "Measure":
        raise NotImplementedError(f"search of {resource_type}")
    found = []
    for resource in MEASURES.values():
        if all(_matches(resource, clause) for clause in clauses):
            found.append(resource)
    return found


def _matches(resource: Json, clause: Clause) -> bool:
    if clause.name == "_id":
        return resource["id"] in clause.values
    if clause.name == "url":
        return resource["url"] in clause.values
    raise NotImplementedError(f"Measure search parameter {clause.name}")


def search(
    resource_type: str,
    clauses: Sequence[Clause],
    tenant: Tenant,
    *,
    descending: bool,
    limit: int,
    cursor: Cursor | None,
) -> Statement[Page]:
    """A keyset page of the Measures matching, by id, as tables.search pages a table."""
    backwards = fetches_descending(descending, cursor)
    rows = sorted(_matching(resource_type, clauses), key=lambda r: str(r["id"]), reverse=backwards)
    if cursor is not None:
        if len(cursor.key) != 1 or not isinstance(cursor.key[0], str):
            raise SearchParameterError("_cursor", "not a page of this search")
        after = cursor.key[0]
        rows = [r for r in rows if (r["id"] < after if backwards else r["id"] > after)]
    keyed = [(r["id"], r) for r in rows[: limit + 1]]  # page_of takes rows: (key, record)
    page = page_of(keyed, limit, cursor, lambda row: row[1], lambda row: (row[0],))
    return Statement.answer(page)


def count(
    resource_type: str, clauses: Sequence[Clause], tenant: Tenant, *, accurate: bool = False
) -> Statement[int | None]:
    return Statement.answer(len(_matching(resource_type, clauses)))
