"""The SQL of MeasureReports: each group of each current evaluation (migration 0017) is one
row, so that reads, searches, totals and keyset pages work as for a table (tables.py
registers MEASURE_REPORTS as it does AuditEvent's).

The current evaluation of a population, grouping and period is the latest by computed_at.
Every evaluation's document holds the group `all` too; a period's `all` report comes from
the latest current evaluation of that population and period, whatever its grouping, so there
is one report per group and period. A report's id is a name-based UUID (v5) of its
population, period and subject: it stays the same when the evaluation is recomputed, and
the report it names shows the latest numbers.

Published figures: every token reads every report (the tenant adds no condition).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.mapping.codes import FHIR_BASE
from ehealthlab.fhir.mapping.rows import MeasureReportRecord
from ehealthlab.fhir.measures.groups import SUBJECT_SQL
from ehealthlab.fhir.measures.reports import DEFAULT_MIN_GROUP_PATIENTS
from ehealthlab.fhir.search.criteria import Clause, DateRange, SearchParameterError
from ehealthlab.fhir.search.cursors import CursorKey
from ehealthlab.fhir.search.sql import Sql, Table, one_of

#: name space of the reports' ids
REPORT_NAMESPACE = uuid5(NAMESPACE_URL, f"{FHIR_BASE}/MeasureReport")


def report_id(population: str, period_from: str, period_to: str, subject: str) -> UUID:
    """The id of a report (the SQL computes the same)."""
    return uuid5(REPORT_NAMESPACE, f"{population}/{period_from}/{period_to}/{subject}")


_CURRENT = (
    "SELECT c.*, row_number() OVER (PARTITION BY c.population, c.period_from, c.period_to"
    " ORDER BY c.computed_at DESC, c.grouping) AS all_rank"
    " FROM (SELECT DISTINCT ON (e.population, e.grouping, e.period_from, e.period_to)"
    " e.population, e.grouping, e.period_from, e.period_to, e.computed_at, e.document"
    " FROM evaluations e"
    " ORDER BY e.population, e.grouping, e.period_from, e.period_to, e.computed_at DESC) c"
)
_GROUPS = (
    "SELECT g.key AS group_key, g.value AS figures, false AS is_all FROM jsonb_each(CASE"
    " WHEN c.grouping <> 'all' AND jsonb_typeof(c.document->'groups') = 'object'"
    " THEN c.document->'groups' ELSE '{}'::jsonb END) g"
    " UNION ALL SELECT 'all', c.document->'all', true WHERE c.all_rank = 1"
)
_REPORTS = (
    "SELECT uuid_generate_v5('" + str(REPORT_NAMESPACE) + "'::uuid, c.population || '/'"  # noqa: S608 - no values: constants of this module
    " || to_char(c.period_from, 'YYYY-MM-DD') || '/' || to_char(c.period_to, 'YYYY-MM-DD')"
    " || '/' || s.subject) AS id,"
    " c.population, s.grouping, c.period_from, c.period_to, c.computed_at, s.group_key,"
    " s.subject, s.figures,"
    " CASE WHEN jsonb_typeof(c.document->'min_group_patients') = 'number'"
    " THEN (c.document->>'min_group_patients')::numeric::integer"
    f" ELSE {DEFAULT_MIN_GROUP_PATIENTS} END AS min_group_patients,"
    " c.document->'labels'->>s.group_key AS label"
    f" FROM ({_CURRENT}) c"
    " CROSS JOIN LATERAL (SELECT x.group_key, x.figures,"
    " CASE WHEN x.is_all THEN 'all' ELSE c.grouping END AS grouping,"
    " CASE WHEN x.is_all THEN 'Group/all' ELSE "
    + SUBJECT_SQL.format(grouping="c.grouping", key="x.group_key")
    + f" END AS subject FROM ({_GROUPS}) x) s"
)

#: the start and end of a report's period as instants (Europe/Rome days, end excluded)
_START = "(r.period_from::timestamp AT TIME ZONE 'Europe/Rome')"
_END = "(r.period_to::timestamp AT TIME ZONE 'Europe/Rome')"


def period_condition(sql: Sql, ranges: Sequence[DateRange]) -> str:
    """FHIR date search against a Period: the report's days [start, end) against each
    value's range [lower, upper) (None: unbounded)."""
    alternatives = []
    for value in ranges:
        low = None if value.lower is None else f"{sql.bind(value.lower)}::timestamptz"
        high = None if value.upper is None else f"{sql.bind(value.upper)}::timestamptz"
        bounds = []
        if low is not None:
            bounds.append(f"{_START} >= {low}")
        if high is not None:
            bounds.append(f"{_END} <= {high}")
        within = " AND ".join(bounds) or "TRUE"
        condition = {
            "eq": within,  # the value's range contains the period
            "ne": f"NOT ({within})",
            "gt": f"{_END} > {high}" if high else "FALSE",  # some of it after the value
            "sa": f"{_START} >= {high}" if high else "FALSE",  # all of it after
            "lt": f"{_START} < {low}" if low else "FALSE",  # some of it before
            "eb": f"{_END} <= {low}" if low else "FALSE",  # all of it before
            "ge": f"{_END} > {low}" if low else "TRUE",
            "le": f"{_START} < {high}" if high else "TRUE",
        }[value.prefix]
        alternatives.append(f"({condition})")
    return " OR ".join(alternatives) or "FALSE"


def _everyone(sql: Sql, tenant: Tenant) -> None:
    """Published figures: small groups are suppressed in the resource itself."""


def _clause(sql: Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name == "_id":
        sql.where(one_of(sql, "r.id", values) if values else "FALSE")
    elif name == "measure":
        sql.where("TRUE" if values else "FALSE")
    elif name == "subject":
        subjects = [f"{kind}/{found}" for kind, found in values]
        sql.where(one_of(sql, "r.subject", subjects) if subjects else "FALSE")
    elif name == "period":
        sql.where(period_condition(sql, values))
    elif name == "_tag":
        sql.where(one_of(sql, "r.population", values) if values else "FALSE")
    else:
        raise NotImplementedError(f"MeasureReport search parameter {name}")


def _uuid_key(key: CursorKey) -> tuple[Any, ...]:
    try:
        if len(key) != 1:
            raise ValueError
        return (UUID(str(key[0])),)
    except ValueError:
        raise SearchParameterError("_cursor", "not a page of this search") from None


def _record(row: Sequence[Any]) -> MeasureReportRecord:
    return MeasureReportRecord(*row)


MEASURE_REPORTS = Table(
    "SELECT r.id, r.population, r.grouping, r.period_from, r.period_to, r.computed_at,"  # noqa: S608 - constants
    " r.group_key, r.subject, r.figures, r.min_group_patients, r.label"
    f" FROM ({_REPORTS}) r",
    ("r.id",),
    _uuid_key,
    lambda row: (str(row[0]),),
    _record,
    _everyone,
    _clause,
)
