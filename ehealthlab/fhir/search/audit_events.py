"""The SQL of AuditEvents: the audit trail's rows (`fhir_audit_events`, written by audit.py),
which only the operator reads. A Table (sql.py) like the others, sorted by (recorded, id).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.search.criteria import Clause, EntityRef, SearchParameterError
from ehealthlab.fhir.search.cursors import CursorKey, from_micros, micros
from ehealthlab.fhir.search.sql import Sql, Table, date_condition, one_of


class AuditRow(NamedTuple):
    """SELECT id, recorded, organisation_id, token_id, action, interaction, resource_type,
    resource_id, operation, query, patient_ids, outcome, http_status, detail, results
    FROM fhir_audit_events"""

    id: UUID
    recorded: datetime
    organisation_id: UUID
    token_id: UUID
    action: str
    interaction: str
    resource_type: str
    resource_id: str | None
    operation: str | None
    query: str | None
    patient_ids: list[UUID]
    outcome: int
    http_status: int
    detail: str
    results: int | None


def _audit_tenant(sql: Sql, tenant: Tenant) -> None:
    if not tenant.sees_everything:
        sql.where("FALSE")


def _audit_clause(sql: Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name == "_id":
        sql.where(one_of(sql, "a.id", values))
    elif name == "date":
        sql.where(date_condition(sql, "a.recorded", values))
    elif name == "agent":
        sql.where(one_of(sql, "a.organisation_id", values))
    elif name == "patient":
        sql.where(f"a.patient_ids && {sql.bind(list(values))}::uuid[]")
    elif name == "entity":
        entities: Sequence[EntityRef] = values
        alternatives = []
        for entity in entities:
            same = (
                f"a.resource_type = {sql.bind(entity.resource_type)}"
                f" AND a.resource_id = {sql.bind(entity.resource_id)}"
            )
            patient = _as_uuid(entity.resource_id) if entity.resource_type == "Patient" else None
            if patient is not None:
                same += f" OR {sql.bind(patient)}::uuid = ANY(a.patient_ids)"
            alternatives.append(f"({same})")
        sql.where(" OR ".join(alternatives) or "FALSE")
    elif name == "outcome":
        sql.where(one_of(sql, "a.outcome", [int(v) for v in values]))
    elif name == "subtype":
        sql.where(one_of(sql, "a.interaction", values))
    elif name == "action":
        sql.where(one_of(sql, "a.action::text", values))
    else:
        raise NotImplementedError(f"AuditEvent search parameter {name}")


def _as_uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _audit_key(key: CursorKey) -> tuple[Any, ...]:
    if len(key) != 2 or not isinstance(key[0], int) or not isinstance(key[1], str):
        raise SearchParameterError("_cursor", "not a page of this search")
    try:
        return (from_micros(key[0]), UUID(key[1]))
    except ValueError:
        raise SearchParameterError("_cursor", "not a page of this search") from None


AUDIT_EVENTS = Table(
    "SELECT a.id, a.recorded, a.organisation_id, a.token_id, a.action, a.interaction,"
    " a.resource_type, a.resource_id, a.operation, a.query, a.patient_ids, a.outcome,"
    " a.http_status, a.detail, a.results FROM fhir_audit_events a",
    ("a.recorded", "a.id"),
    _audit_key,
    lambda row: (micros(row[1]), str(row[0])),
    lambda row: AuditRow(*row),
    _audit_tenant,
    _audit_clause,
)
