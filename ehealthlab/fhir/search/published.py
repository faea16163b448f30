"""Reads and searches of what the platform publishes for every token, confined to no tenant:
the SUS Questionnaire (no SQL: it is the code's).

Each function returns a `Statement` (sql.py), as tables.py's do, so the read and search
handlers (rest/interactions.py) treat these types like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.questionnaires.sus import SUS_ID, questionnaire_json
from ehealthlab.fhir.search.criteria import Clause
from ehealthlab.fhir.search.cursors import Cursor
from ehealthlab.fhir.search.sql import Page, Statement

#: the types served here
TYPES = frozenset({"Questionnaire"})


def read(resource_type: str, resource_id: str, tenant: Tenant) -> Statement[Any | None]:
    """The record of a published resource (for the Questionnaire, its JSON), or None."""
    if resource_type == "Questionnaire":
        return Statement.answer(questionnaire_json() if resource_id == SUS_ID else None)
    raise NotImplementedError(f"read of {resource_type}")


def search(
    resource_type: str,
    clauses: Sequence[Clause],
    tenant: Tenant,
    *,
    descending: bool,
    limit: int,
    cursor: Cursor | None,
) -> Statement[Page]:
    raise NotImplementedError(f"search of {resource_type}")


def count(
    resource_type: str, clauses: Sequence[Clause], tenant: Tenant, *, accurate: bool = False
) -> Statement[int | None]:
    raise NotImplementedError(f"search of {resource_type}")
