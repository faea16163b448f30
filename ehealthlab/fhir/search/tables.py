"""The SQL of the resources kept in one table each, sorted by id: Patient, Device, Location,
Organization and QuestionnaireResponse (and AuditEvent, audit_events.py, and MeasureReport,
measure_reports.py, one row per group of an evaluation). Reads by id,
searches confined to the caller's tenant, totals.

Each type is a Table (sql.py): its SELECT, its sort key, its record (mapping/rows.py), the
condition that confines it to the tenant, and the condition of each of its criteria.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.mapping.rows import (
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
    SusResponseRecord,
)
from ehealthlab.fhir.search.audit_events import AUDIT_EVENTS
from ehealthlab.fhir.search.criteria import Clause, OrganisationTypeMatch, SearchParameterError
from ehealthlab.fhir.search.cursors import Cursor, CursorKey
from ehealthlab.fhir.search.measure_reports import MEASURE_REPORTS
from ehealthlab.fhir.search.sql import (
    TOTAL_CAP,
    Page,
    Sql,
    Statement,
    Table,
    at_most,
    date_condition,
    fetches_descending,
    first_int,
    keyset,
    one_of,
    order_by,
    page_of,
    string_condition,
)


def _text_key(key: CursorKey) -> tuple[Any, ...]:
    if len(key) != 1 or not isinstance(key[0], str):
        raise SearchParameterError("_cursor", "not a page of this search")
    return (key[0],)


def _uuid_key(key: CursorKey) -> tuple[Any, ...]:
    try:
        return (UUID(str(_text_key(key)[0])),)
    except ValueError:
        raise SearchParameterError("_cursor", "not a page of this search") from None


def _patient_tenant(sql: Sql, tenant: Tenant) -> None:
    if tenant.kind == "provider":
        sql.where(f"pt.organisation_id = {sql.bind(tenant.organisation_id)}")
    elif tenant.kind != "operator":
        sql.where("FALSE")


def _patient_clause(sql: Sql, clause: Clause) -> None:
    column = {
        "_id": "pt.id",
        "identifier": "pt.identifier_hash",
        "organization": "pt.organisation_id",
    }
    sql.where(one_of(sql, column[clause.name], clause.values))


def _device_tenant(sql: Sql, tenant: Tenant) -> None:
    if tenant.kind == "startup":
        sql.where(f"dv.organisation_id = {sql.bind(tenant.organisation_id)}")
    elif tenant.kind == "provider":
        sql.where(
            "EXISTS (SELECT 1 FROM enrolments e JOIN patients p ON p.id = e.patient_id"  # noqa: S608 - values are bound
            " WHERE e.device_id = dv.device_id AND p.organisation_id = "
            f"{sql.bind(tenant.organisation_id)})"
        )


def _device_clause(sql: Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name in ("_id", "identifier"):
        sql.where(one_of(sql, "dv.device_id", values))
    elif name == "type":
        sql.where(one_of(sql, "dv.device_type", values))
    elif name == "organization":
        sql.where(one_of(sql, "dv.organisation_id", values))
    elif name == "status":
        states = set(values)
        if not states:
            sql.where("FALSE")
        elif states == {"active"}:
            sql.where("dv.revoked_at IS NULL")
        elif states == {"inactive"}:
            sql.where("dv.revoked_at IS NOT NULL")
    else:
        raise NotImplementedError(f"Device search parameter {name}")


def _everyone(sql: Sql, tenant: Tenant) -> None:
    """Municipalities are public reference data."""


def _location_clause(sql: Sql, clause: Clause) -> None:
    if clause.name in ("_id", "identifier"):
        sql.where(one_of(sql, "m.istat_code", clause.values))
    elif clause.name == "name":
        sql.where(string_condition(sql, "m.name", clause.values))
    else:
        raise NotImplementedError(f"Location search parameter {clause.name}")


def _organisation_tenant(sql: Sql, tenant: Tenant) -> None:
    """Itself, and the organisations what it may read refers to: a provider, the start-ups
    owning devices its patients were enrolled with; a start-up, the providers of the patients
    its devices were enrolled with (its Observations name them as performers)."""
    me = sql.bind(tenant.organisation_id)
    if tenant.kind == "provider":
        sql.where(
            f"o.id = {me} OR o.id IN (SELECT dv.organisation_id FROM devices dv"  # noqa: S608 - values are bound
            " JOIN enrolments e ON e.device_id = dv.device_id"
            f" JOIN patients p ON p.id = e.patient_id WHERE p.organisation_id = {me})"
        )
    elif tenant.kind == "startup":
        sql.where(
            f"o.id = {me} OR o.id IN (SELECT p.organisation_id FROM patients p"  # noqa: S608 - values are bound
            " JOIN enrolments e ON e.patient_id = p.id"
            f" JOIN devices dv ON dv.device_id = e.device_id WHERE dv.organisation_id = {me})"
        )


def _organisation_clause(sql: Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name == "_id":
        sql.where(one_of(sql, "o.id", values))
    elif name == "identifier":
        sql.where(one_of(sql, "o.fls_code", values))
    elif name == "name":
        sql.where(string_condition(sql, "o.name", values))
    elif name == "type":
        types: Sequence[OrganisationTypeMatch] = values
        kinds = sorted({kind for t in types for kind in t.kinds})
        asl = any(t.asl for t in types)
        sql.where(one_of(sql, "o.kind", kinds) + (" OR o.fls_code IS NOT NULL" if asl else ""))
    else:
        raise NotImplementedError(f"Organization search parameter {name}")


def _response_tenant(sql: Sql, tenant: Tenant) -> None:
    """A provider sees the responses about its own patients; the operator every one."""
    if tenant.kind == "provider":
        sql.where(f"pt.organisation_id = {sql.bind(tenant.organisation_id)}")
    elif tenant.kind != "operator":
        sql.where("FALSE")


#: the start of the day a response was answered, as an instant (its `authored`)
_AUTHORED = "(q.answered_on::timestamp AT TIME ZONE 'Europe/Rome')"


def _response_clause(sql: Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name in ("_id", "patient"):
        sql.where(
            one_of(sql, "q.id" if name == "_id" else "q.patient_id", values) if values else "FALSE"
        )
    elif name == "subject":
        patients = [v for kind, v in values if kind == "Patient"]
        places = [v for kind, v in values if kind == "Location"]
        alternatives = []
        if patients:
            with contextlib.suppress(ValueError):  # not one of our ids: it matches nothing
                alternatives.append(one_of(sql, "q.patient_id", [UUID(p) for p in patients]))
        if places:
            alternatives.append(f"q.patient_id IS NULL AND {one_of(sql, 'q.municipality', places)}")
        sql.where(" OR ".join(f"({a})" for a in alternatives) or "FALSE")
    elif name == "authored":
        sql.where(date_condition(sql, _AUTHORED, values))
    elif name == "questionnaire":
        sql.where("TRUE" if values else "FALSE")
    else:
        raise NotImplementedError(f"QuestionnaireResponse search parameter {name}")


#: the SELECT of a QuestionnaireResponse (mapping/rows.py SusResponseRecord)
SUS_RESPONSES_SELECT = (
    "SELECT q.id, q.answered_on, q.respondent, q.patient_id, q.municipality,"
    " q.items::integer[], q.score, q.simulated, q.organisation_id"
    " FROM sus_responses q LEFT JOIN patients pt ON pt.id = q.patient_id"
)

_TABLES: dict[str, Table] = {
    "Patient": Table(
        "SELECT pt.id, pt.organisation_id, pt.identifier_hash FROM patients pt",
        ("pt.id",),
        _uuid_key,
        lambda row: (str(row[0]),),
        lambda row: PatientRecord(*row),
        _patient_tenant,
        _patient_clause,
    ),
    "Device": Table(
        "SELECT dv.device_id, dv.organisation_id, dv.device_type, dv.model, dv.serial,"
        " dv.firmware, dv.revoked_at FROM devices dv",
        ("dv.device_id",),
        _text_key,
        lambda row: (row[0],),
        lambda row: DeviceRecord(*row),
        _device_tenant,
        _device_clause,
    ),
    "Location": Table(
        "SELECT m.istat_code, m.name, m.latitude, m.longitude, m.snai_class::text,"
        " m.snai_class_label FROM municipalities m",
        ("m.istat_code",),
        _text_key,
        lambda row: (row[0],),
        lambda row: MunicipalityRecord(*row),
        _everyone,
        _location_clause,
    ),
    "Organization": Table(
        "SELECT o.id, o.kind, o.name, o.fls_code FROM organisations o",
        ("o.id",),
        _uuid_key,
        lambda row: (str(row[0]),),
        lambda row: OrganisationRecord(*row),
        _organisation_tenant,
        _organisation_clause,
    ),
    "AuditEvent": AUDIT_EVENTS,
    "MeasureReport": MEASURE_REPORTS,
    "QuestionnaireResponse": Table(
        SUS_RESPONSES_SELECT,
        ("q.id",),
        _uuid_key,
        lambda row: (str(row[0]),),
        lambda row: SusResponseRecord(*row),
        _response_tenant,
        _response_clause,
    ),
}

#: what a read by id looks up, per type: the id column and how a path id becomes its value
_ID_COLUMNS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Patient": ("pt.id", UUID),
    "Device": ("dv.device_id", str),
    "Location": ("m.istat_code", str),
    "Organization": ("o.id", UUID),
    "AuditEvent": ("a.id", UUID),
    "QuestionnaireResponse": ("q.id", UUID),
    "MeasureReport": ("r.id", UUID),
}


def _filters(resource_type: str, clauses: Sequence[Clause], tenant: Tenant) -> Sql:
    table = _TABLES[resource_type]
    sql = Sql()
    table.tenant(sql, tenant)
    for clause in clauses:
        table.clause(sql, clause)
    return sql


def read(resource_type: str, resource_id: str, tenant: Tenant) -> Statement[Any | None]:
    """The record of a Patient, Device, Location, Organization or AuditEvent, if the tenant
    may see it (an id that cannot be one is simply not found)."""
    table = _TABLES[resource_type]
    column, convert = _ID_COLUMNS[resource_type]
    try:
        value = convert(resource_id)
    except ValueError:
        return Statement.answer(None)
    sql = Sql()
    table.tenant(sql, tenant)
    sql.where(f"{column} = {sql.bind(value)}")
    return Statement(
        f"{table.select} WHERE {sql.condition()}",
        sql.params,
        lambda rows: table.record(rows[0]) if rows else None,
    )


def search(
    resource_type: str,
    clauses: Sequence[Clause],
    tenant: Tenant,
    *,
    descending: bool,
    limit: int,
    cursor: Cursor | None,
) -> Statement[Page]:
    table = _TABLES[resource_type]
    sql = _filters(resource_type, clauses, tenant)
    fetch_descending = fetches_descending(descending, cursor)
    if cursor is not None:
        keyset(sql, table.key_columns, table.key_values(cursor.key), fetch_descending)
    query = (
        f"{table.select} WHERE {sql.condition()}"
        f" ORDER BY {order_by(table.key_columns, fetch_descending)} LIMIT {int(limit) + 1}"
    )
    return Statement(
        query,
        sql.params,
        lambda rows: page_of(rows, limit, cursor, table.record, table.row_key),
    )


def count(
    resource_type: str,
    clauses: Sequence[Clause],
    tenant: Tenant,
    *,
    accurate: bool = False,
) -> Statement[int | None]:
    """How many match: exactly with `accurate`, else up to TOTAL_CAP (None beyond: only
    the audit trail grows that large)."""
    table = _TABLES[resource_type]
    sql = _filters(resource_type, clauses, tenant)
    from_part = table.select[table.select.index(" FROM ") :]
    cap = TOTAL_CAP
    limit = "" if accurate else f" LIMIT {cap + 1}"
    query = f"SELECT count(*) FROM (SELECT 1{from_part} WHERE {sql.condition()}{limit}) c"  # noqa: S608 - values are bound
    if accurate:
        return Statement(query, sql.params, first_int)
    return Statement(query, sql.params, lambda rows: at_most(first_int(rows), cap))
