"""The SQL behind /fhir: reads by id, searches confined to the caller's tenant, totals, keyset
pages and $lastn. Returns the records of rows.py (and audit.py); JSON is built elsewhere.

Every value reaches PostgreSQL as a bound parameter; the SQL text depends only on which
criteria a search has, so psycopg prepares each shape of search once per connection.

Observations. One Observation is one stored reading, except blood pressure: the systolic and
diastolic readings of one inflation (same device, `at` and patient) are one panel. A panel
matches a search when either half does, and is represented by one *principal* row: its
systolic reading if that matches, else its diastolic one, carrying the other half (see
_principal_rows). So pages, counts (one group per Observation) and keyset cursors all work
on principal rows, and a page boundary can never split a pair. Halves with different patients
(an inflation split by an enrolment boundary, should clock corrections ever put one there)
are two panels, each in its own patient's record, rather than one revealing the other's value.

Pages are keyset pages: rows after (or before) the sort key of the last (first) row shown,
so page 1,000 costs what page 1 costs. Sort keys are unique: Observations by (measured_at,
device_id, metric, at), audit events by (recorded, id), everything else by id.

Each function returns a `Statement`: one SQL statement and what its rows mean, so that a
request sends all of its statements at once (`run`: one round trip, pipelined) on the API's
asynchronous connections, which plan generically (see `GENERIC_PLANS`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar
from uuid import UUID

import psycopg

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.mapping.codes import BLOOD_PRESSURE, DIASTOLIC, FHIR_BASE, SYSTOLIC
from ehealthlab.fhir.mapping.ids import ObservationKey
from ehealthlab.fhir.mapping.rows import (
    BloodPressureReadings,
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
    ReadingRecord,
)
from ehealthlab.fhir.search import (
    Clause,
    Cursor,
    CursorKey,
    DateRange,
    EntityRef,
    MetricMatch,
    OrganisationTypeMatch,
    SearchParameterError,
    StringMatch,
    from_micros,
    micros,
)

#: the name space of Observation identifiers, as ids.py defines it (a test checks that an
#: identifier search finds what ids.observation_identifier names)
OBSERVATION_IDENTIFIER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{FHIR_BASE}/Observation")

ObservationSource = ReadingRecord | BloodPressureReadings
AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]
Row = tuple[Any, ...]
T = TypeVar("T")

#: how the API's connections plan (libpq `options`): searches that name patients, devices or
#: ids are planned once per connection, not once per request. psycopg prepares a statement
#: run repeatedly, but PostgreSQL would still plan it afresh for every new patient or device,
#: because a plan made for the value at hand looks cheaper than a generic one; planning over
#: every partition of `readings` costs more than running these queries ($lastn: about 7 ms
#: against 1), and their generic plans are the same index scans, partitions pruned as they
#: run. Statements with `custom_plan` (searches over a whole tenant, whose generic plans are
#: twenty times slower) switch back for their own transaction.
GENERIC_PLANS = "-c plan_cache_mode=force_generic_plan"


@dataclass(frozen=True, slots=True)
class Statement(Generic[T]):
    """One SQL statement and what its rows mean. No SQL: the answer is known already."""

    sql: str
    params: Mapping[str, Any]
    result: Callable[[list[Row]], T]
    #: planned for its own values (see GENERIC_PLANS)
    custom_plan: bool = False

    @staticmethod
    def answer(value: T) -> Statement[T]:
        """A statement that needs no database."""
        return Statement("", {}, lambda rows: value)


async def run(conn: AsyncConnection, statements: Sequence[Statement[Any]]) -> list[Any]:
    """The statements' results, in order (autocommit: each statement sees its own snapshot,
    as in READ COMMITTED). One after the other: pipeline mode would save a round trip for
    the second, but psycopg's asynchronous pipeline polls the socket while it waits, which
    costs more CPU than the round trip takes."""
    results = []
    for statement in statements:
        if not statement.sql:
            rows: list[Row] = []
        elif statement.custom_plan:
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = auto")
                rows = await (await conn.execute(statement.sql, statement.params)).fetchall()
        else:
            rows = await (await conn.execute(statement.sql, statement.params)).fetchall()
        results.append(statement.result(rows))
    return results


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


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search: records in display order, and the sort keys of the first and
    last (where the previous and next pages start; None when the page is empty)."""

    records: list[Any]
    first_key: CursorKey | None
    last_key: CursorKey | None
    has_next: bool
    has_previous: bool


class _Sql:
    """Conditions and their bound parameters, collected while a query is written."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.conditions: list[str] = []
        self.uses_device_type = False

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"%({name})s"

    def where(self, condition: str) -> None:
        self.conditions.append(condition)

    def condition(self) -> str:
        return " AND ".join(f"({c})" for c in self.conditions) or "TRUE"


# -- Observations ---------------------------------------------------------------------------

#: pairs the rows of a stream ordered by key with their neighbours: the other half of a panel
#: (same device, `at` and patient) sits next to its half whenever both match
_IS_PARTNER = (
    "({side}).device_id = m.device_id AND ({side}).at = m.at"
    " AND ({side}).patient_id IS NOT DISTINCT FROM m.patient_id"
    " AND ({side}).metric = CASE m.metric WHEN 'bp_systolic' THEN 'bp_diastolic'"
    " WHEN 'bp_diastolic' THEN 'bp_systolic' END"
)
#: principal rows `q` (with `partner`, the neighbouring other half if any) as the mapping's
#: records; a half that was not a neighbour is looked up (LIMIT keeps that subquery apart,
#: so the test on `q` spares every other row the lookup)
_RECORDS = """
SELECT q.device_id,
       (SELECT dv.device_type FROM devices dv WHERE dv.device_id = q.device_id),
       q.metric, q.at, q.value, q.measured_at, q.received_at, q.clock_corrected, q.patient_id,
       (SELECT p.organisation_id FROM patients p WHERE p.id = q.patient_id) AS provider_id,
       coalesce((q.partner).value, d.value), coalesce((q.partner).measured_at, d.measured_at),
       coalesce((q.partner).received_at, d.received_at),
       coalesce((q.partner).clock_corrected, d.clock_corrected)
FROM ({rows}) q
LEFT JOIN LATERAL (
    SELECT d.value, d.measured_at, d.received_at, d.clock_corrected FROM readings d
    WHERE (q.partner).device_id IS NULL AND q.metric IN ('bp_systolic', 'bp_diastolic')
      AND d.device_id = q.device_id AND d.at = q.at
      AND d.metric = CASE q.metric WHEN 'bp_systolic' THEN 'bp_diastolic' ELSE 'bp_systolic' END
      AND d.patient_id IS NOT DISTINCT FROM q.patient_id
    LIMIT 1
) d ON TRUE
ORDER BY {order}"""
_OBSERVATION_ID = (
    "r.device_id || '.' || CASE WHEN r.metric IN ('bp_systolic', 'bp_diastolic')"
    " THEN 'blood-pressure' ELSE replace(r.metric, '_', '-') END || '.'"
    " || ((extract(epoch FROM r.at) * 1000000)::bigint)::text"
)
#: one group per Observation: a reading, or both halves of a panel
_OBSERVATION_GROUP = (
    "r.device_id, r.at, r.patient_id,"
    " CASE WHEN r.metric IN ('bp_systolic', 'bp_diastolic') THEN '' ELSE r.metric END"
)
_KEY_COLUMNS = ("measured_at", "device_id", "metric", "at")
_OBSERVATION_KEY = tuple(f"r.{column}" for column in _KEY_COLUMNS)
#: a search's total, unless asked for accurately, is counted up to this many matches (no
#: total beyond): finding that a patient has more costs a scan of 2,001 index entries
#: (0.15 ms), counting a year of their readings 15 ms, more than answering the page
TOTAL_CAP = 1_000


def _metric_condition(sql: _Sql, matches: Sequence[MetricMatch]) -> str:
    alternatives = []
    for match in matches:
        condition = _in(sql, "r.metric", sorted(match.metrics))
        if match.device_types is not None:
            sql.uses_device_type = True
            condition += " AND " + _in(sql, "dv.device_type", sorted(match.device_types))
        alternatives.append(f"({condition})")
    return " OR ".join(alternatives) or "FALSE"


def _date_condition(sql: _Sql, column: str, ranges: Sequence[DateRange]) -> str:
    """FHIR date semantics for a point in time against a search value's range."""
    alternatives = []
    for value in ranges:
        lower = None if value.lower is None else sql.bind(value.lower)
        upper = None if value.upper is None else sql.bind(value.upper)
        bounds = []
        if lower is not None:
            bounds.append(f"{column} >= {lower}")
        if upper is not None:
            bounds.append(f"{column} < {upper}")
        within = " AND ".join(bounds) or "TRUE"
        condition = {
            "eq": within,
            "ne": f"NOT ({within})",
            "lt": f"{column} < {lower}" if lower else "FALSE",
            "eb": f"{column} < {lower}" if lower else "FALSE",
            "gt": f"{column} >= {upper}" if upper else "FALSE",
            "sa": f"{column} >= {upper}" if upper else "FALSE",
            "le": f"{column} < {upper}" if upper else "TRUE",
            "ge": f"{column} >= {lower}" if lower else "TRUE",
        }[value.prefix]
        alternatives.append(f"({condition})")
    return " OR ".join(alternatives) or "FALSE"


def _only_value(clauses: Sequence[Clause], names: tuple[str, ...]) -> Any | None:
    """The value of a criterion naming one patient (or device), if the search has one."""
    for clause in clauses:
        if clause.name in names and clause.missing is None and len(clause.values) == 1:
            return clause.values[0]
    return None


def _observation_conditions(sql: _Sql, clauses: Sequence[Clause], tenant: Tenant) -> None:
    """The tenant and the criteria, on readings `r`.

    When the search names one patient (a provider) or one device (a start-up), the tenant
    is checked once, on that patient or device, rather than on every reading read.
    """
    if tenant.kind == "provider":
        organisation = sql.bind(tenant.organisation_id)
        patient = _only_value(clauses, ("patient", "subject"))
        if patient is not None:
            sql.where(
                "EXISTS (SELECT 1 FROM patients WHERE id = "  # noqa: S608 - values are bound
                f"{sql.bind(patient)} AND organisation_id = {organisation})"
            )
        else:
            sql.where(
                f"r.patient_id IN (SELECT id FROM patients WHERE organisation_id = {organisation})"  # noqa: S608 - values are bound
            )
    elif tenant.kind == "startup":
        organisation = sql.bind(tenant.organisation_id)
        device = _only_value(clauses, ("device",))
        if device is not None:
            sql.where(
                "EXISTS (SELECT 1 FROM devices WHERE device_id = "  # noqa: S608 - values are bound
                f"{sql.bind(device)} AND organisation_id = {organisation})"
            )
        else:
            sql.where(
                "r.device_id IN (SELECT device_id FROM devices WHERE organisation_id = "  # noqa: S608 - values are bound
                f"{organisation})"
            )
    for clause in clauses:
        if clause.name in ("patient", "subject"):
            if clause.missing is not None:
                sql.where(f"r.patient_id IS {'' if clause.missing else 'NOT '}NULL")
            else:
                sql.where(_in(sql, "r.patient_id", clause.values))
        elif clause.name == "date":
            sql.where(_date_condition(sql, "r.measured_at", clause.values))
        else:
            sql.where(_reading_condition(sql, clause))


def _reading_condition(sql: _Sql, clause: Clause) -> str:
    """A criterion both halves of a panel meet alike."""
    name, values = clause.name, clause.values
    if name == "device":
        return _in(sql, "r.device_id", values)
    if name in ("code", "component-code", "combo-code", "category"):
        return _metric_condition(sql, values)
    if name == "identifier":
        return (
            f"uuid_generate_v5({sql.bind(OBSERVATION_IDENTIFIER_NAMESPACE)}::uuid,"
            f" {_OBSERVATION_ID}) = ANY({sql.bind(list(values))}::uuid[])"
        )
    if name == "_id":
        keys: Sequence[ObservationKey] = values
        return (
            " OR ".join(
                f"(r.device_id = {sql.bind(k.device_id)} AND r.at = {sql.bind(k.at)}"
                f" AND {_in(sql, 'r.metric', k.metrics)})"
                for k in keys
            )
            or "FALSE"
        )
    # a parameter declared in search.py but not written here is a bug
    raise NotImplementedError(f"Observation search parameter {name}")


def _observation_filters(clauses: Sequence[Clause], tenant: Tenant) -> _Sql:
    sql = _Sql()
    _observation_conditions(sql, clauses, tenant)
    return sql


def _key_order(alias: str, descending: bool) -> str:
    return _order([f"{alias}.{column}" for column in _KEY_COLUMNS], descending)


def _principal_rows(sql: _Sql, clauses: Sequence[Clause], *, descending: bool, limit: str) -> str:
    """The first `limit` principal rows of the readings `sql` matches, in key order.

    A matching reading stands for its Observation unless it is a diastolic reading whose
    systolic half matches too. The halves of a panel share device, `at`, patient (so the
    tenant), id, and each code of one matches the other: of the criteria only dates can
    tell them apart. Ordered by key, matching halves with the same time are neighbours, so
    each row takes its partner from the row before or after it; only a half without a
    matching neighbour (a lone reading, or halves a clock correction put apart) is looked
    up. Each matching panel is thus one row, its systolic one if that matches: a page never
    splits a pair, and a count groups readings without lookups.

    The rows come in the window's order, which the stream states; the levels above filter
    and limit without an ORDER BY of their own, on purpose. An ORDER BY there (or a LIMIT
    given as a parameter) makes PostgreSQL plan the stream for fetching every match: it
    then sorts all of a patient's year of readings (60 ms) instead of reading the first
    ones from an index in order (under 1 ms). Those levels have one relation and no join,
    grouping or sort, so nothing reorders the rows; callers sort the few they get.
    `limit` is a literal for the same reason.
    """
    join = " JOIN devices dv ON dv.device_id = r.device_id" if sql.uses_device_type else ""
    stream = (
        "SELECT r.device_id, r.metric, r.at, r.value, r.measured_at, r.received_at,"  # noqa: S608 - values are bound
        " r.clock_corrected, r.patient_id, lag(r) OVER w AS before, lead(r) OVER w AS after"
        f" FROM readings r{join} WHERE {sql.condition()}"
        f" WINDOW w AS (ORDER BY {_key_order('r', descending)})"
        f" ORDER BY {_key_order('r', descending)}"
    )
    paired = (
        "SELECT m.device_id, m.metric, m.at, m.value, m.measured_at, m.received_at,"  # noqa: S608 - values are bound
        " m.clock_corrected, m.patient_id,"
        f" CASE WHEN {_IS_PARTNER.format(side='m.before')} THEN m.before"
        f" WHEN {_IS_PARTNER.format(side='m.after')} THEN m.after END AS partner"
        f" FROM ({stream}) m"
    )
    systolic_matches = "".join(
        f" AND ({_date_condition(sql, 's.measured_at', clause.values)})"
        for clause in clauses
        if clause.name == "date"
    )
    principal = (
        "q.metric <> 'bp_diastolic' OR ((q.partner).device_id IS NULL AND NOT EXISTS ("  # noqa: S608 - values are bound
        "SELECT 1 FROM readings s WHERE s.device_id = q.device_id AND s.metric = 'bp_systolic'"
        f" AND s.at = q.at AND s.patient_id IS NOT DISTINCT FROM q.patient_id{systolic_matches}))"
    )
    return f"SELECT q.* FROM ({paired}) q WHERE {principal} LIMIT {limit}"  # noqa: S608 - values are bound


def _narrowed(clauses: Sequence[Clause]) -> bool:
    """True when the criteria name patients, devices or ids: an index on each leads to
    their rows in time order. Otherwise a search runs over the tenant's patients or devices
    one by one (_broad_query)."""
    return any(
        clause.name in ("device", "_id")
        or (clause.name in ("patient", "subject") and clause.missing is None)
        for clause in clauses
    )


def _broad_rows(
    sql: _Sql, clauses: Sequence[Clause], tenant: Tenant, *, descending: bool, limit: str
) -> str:
    """The first principal rows of each of the tenant's patients (a provider) or devices
    (a start-up, the operator), then the first of those: as many short index scans as the
    tenant has patients or devices, instead of sorting all its readings."""
    if tenant.kind == "provider":
        source = "patients pt0"
        where = f" WHERE pt0.organisation_id = {sql.bind(tenant.organisation_id)}"
        sql.where("r.patient_id = pt0.id")
    else:
        source, where = "devices dv0", ""
        if tenant.kind == "startup":
            where = f" WHERE dv0.organisation_id = {sql.bind(tenant.organisation_id)}"
        sql.where("r.device_id = dv0.device_id")
    rows = _principal_rows(sql, clauses, descending=descending, limit=limit)
    return (
        f"SELECT x.* FROM {source} CROSS JOIN LATERAL ({rows}) x{where}"  # noqa: S608 - values are bound
        f" ORDER BY {_key_order('x', descending)} LIMIT {limit}"
    )


def _observation_source(row: Sequence[Any]) -> ObservationSource:
    reading = ReadingRecord(*row[:10])
    if row[10] is None:
        return reading
    partner = ReadingRecord(
        reading.device_id,
        reading.device_type,
        DIASTOLIC if reading.metric == SYSTOLIC else SYSTOLIC,
        reading.at,
        row[10],
        row[11],
        row[12],
        row[13],
        reading.patient_id,
        reading.provider_id,
    )
    if reading.metric == SYSTOLIC:
        return BloodPressureReadings(reading, partner)
    return BloodPressureReadings(partner, reading)


def _observation_key(row: Sequence[Any]) -> CursorKey:
    return (micros(row[5]), row[0], row[2], micros(row[3]))


def _observation_key_values(key: CursorKey) -> tuple[Any, ...]:
    if len(key) != 4 or not isinstance(key[0], int) or not isinstance(key[3], int):
        raise SearchParameterError("_cursor", "not a page of this search")
    return (from_micros(key[0]), key[1], key[2], from_micros(key[3]))


def read_observation(key: ObservationKey, tenant: Tenant) -> Statement[ObservationSource | None]:
    """The Observation an id names, if the tenant may see it."""
    clauses = [Clause("_id", (key,))]
    sql = _observation_filters(clauses, tenant)
    rows = _principal_rows(sql, clauses, descending=True, limit="1")
    return Statement(
        _RECORDS.format(rows=rows, order="q.measured_at"),
        sql.params,
        lambda found: _observation_source(found[0]) if found else None,
    )


def search_observations(
    clauses: Sequence[Clause],
    tenant: Tenant,
    *,
    descending: bool,
    limit: int,
    cursor: Cursor | None,
) -> Statement[Page]:
    """One page of Observations (ReadingRecord or BloodPressureReadings)."""
    sql = _observation_filters(clauses, tenant)
    fetch_descending = _fetch_descending(descending, cursor)
    if cursor is not None:
        _keyset(sql, _OBSERVATION_KEY, _observation_key_values(cursor.key), fetch_descending)
    bound_limit = str(int(limit) + 1)  # a literal: see _principal_rows
    narrowed = _narrowed(clauses)
    if narrowed:
        rows = _principal_rows(sql, clauses, descending=fetch_descending, limit=bound_limit)
    else:
        rows = _broad_rows(sql, clauses, tenant, descending=fetch_descending, limit=bound_limit)
    return Statement(
        _RECORDS.format(rows=rows, order=_key_order("q", fetch_descending)),
        sql.params,
        lambda found: _page(found, limit, cursor, _observation_source, _observation_key),
        custom_plan=not narrowed,
    )


def count_observations(
    clauses: Sequence[Clause], tenant: Tenant, *, accurate: bool = False
) -> Statement[int | None]:
    """How many Observations match: exactly with `accurate`; otherwise up to TOTAL_CAP,
    None beyond (a patient's year of readings takes longer to count than its page takes to
    answer, and a count of a whole store longer still)."""
    sql = _Sql()
    _observation_conditions(sql, clauses, tenant)
    join = " JOIN devices dv ON dv.device_id = r.device_id" if sql.uses_device_type else ""
    matches = f"SELECT 1 FROM readings r{join} WHERE {sql.condition()}"  # noqa: S608 - values are bound
    grouped = f"SELECT count(*) FROM ({matches} GROUP BY {_OBSERVATION_GROUP}) g"  # noqa: S608 - values are bound
    custom = not _narrowed(clauses)
    if accurate:
        return Statement(grouped, sql.params, _first_int, custom_plan=custom)
    # An Observation is one or two readings: more than twice the cap of readings is more
    # than the cap of Observations, found without grouping them all. CASE runs the grouped
    # count only when needed; the caps are literals (a LIMIT parameter misleads the plan).
    cap = TOTAL_CAP
    capped = (
        f"SELECT CASE WHEN (SELECT count(*) FROM ({matches} LIMIT {2 * cap + 1}) c)"  # noqa: S608 - values are bound
        f" <= {2 * cap} THEN ({grouped}) END"
    )
    return Statement(
        capped,
        sql.params,
        lambda rows: _at_most(_first_int(rows), cap),
        custom_plan=custom,
    )


def _first_int(rows: list[Row]) -> int | None:
    return None if not rows or rows[0][0] is None else int(rows[0][0])


def _at_most(found: int | None, cap: int) -> int | None:
    return found if found is not None and found <= cap else None


def lastn_observations(
    clauses: Sequence[Clause], tenant: Tenant, maximum: int
) -> Statement[list[ObservationSource]]:
    """The `maximum` most recent Observations of each code, codes in alphabetical order,
    most recent first within a code: one short backward index scan per code."""
    metrics = set(METRICS)
    for clause in clauses:
        if clause.name in ("code", "component-code", "combo-code", "category"):
            metrics &= {m for match in clause.values for m in match.metrics}
    codes: dict[str, list[str]] = {}
    for metric in sorted(metrics):
        code = BLOOD_PRESSURE if metric in (SYSTOLIC, DIASTOLIC) else metric
        codes.setdefault(code, []).append(metric)
    if not codes:
        return Statement.answer([])
    sql = _observation_filters(clauses, tenant)
    shared = list(sql.conditions)
    bound_max = str(int(maximum))  # a literal: see _principal_rows
    branches = []
    for members in codes.values():
        sql.conditions = [*shared, _in(sql, "r.metric", members)]
        rows = _principal_rows(sql, clauses, descending=True, limit=bound_max)
        branches.append(f"({rows})")

    def by_code(found: list[Row]) -> list[ObservationSource]:
        grouped: dict[str, list[ObservationSource]] = {code: [] for code in sorted(codes)}
        for row in found:
            code = BLOOD_PRESSURE if row[2] in (SYSTOLIC, DIASTOLIC) else row[2]
            grouped[code].append(_observation_source(row))
        return [source for sources in grouped.values() for source in sources]

    return Statement(
        _RECORDS.format(rows=" UNION ALL ".join(branches), order=_key_order("q", True)),
        sql.params,
        by_code,
        custom_plan=not _narrowed(clauses),
    )


# -- keyset pages -----------------------------------------------------------------------------


def _fetch_descending(descending: bool, cursor: Cursor | None) -> bool:
    """The order rows are fetched in: reversed when walking back to a previous page."""
    backwards = cursor is not None and not cursor.after
    return descending != backwards


def _keyset(sql: _Sql, key_columns: Sequence[str], key: tuple[Any, ...], descending: bool) -> None:
    """Rows strictly after `key` in the fetch order."""
    operator = "<" if descending else ">"
    columns = ", ".join(key_columns)
    bound = ", ".join(sql.bind(value) for value in key)
    # the first column alone as well: an index on it can seek there
    sql.where(f"{key_columns[0]} {operator}= {sql.bind(key[0])}")
    sql.where(f"({columns}) {operator} ({bound})")


def _order(key_columns: Sequence[str], descending: bool) -> str:
    direction = " DESC" if descending else ""
    return ", ".join(column + direction for column in key_columns)


def _page(
    rows: Sequence[Sequence[Any]],
    limit: int,
    cursor: Cursor | None,
    record: Callable[[Sequence[Any]], Any],
    key: Callable[[Sequence[Any]], CursorKey],
) -> Page:
    """A page from up to limit + 1 rows fetched in _fetch_descending order."""
    more = len(rows) > limit
    shown = rows[:limit]
    records = [record(row) for row in shown]
    first, last = (key(shown[0]), key(shown[-1])) if shown else (None, None)
    if cursor is not None and not cursor.after:
        records.reverse()
        return Page(records, last, first, has_next=True, has_previous=more)
    return Page(records, first, last, has_next=more, has_previous=cursor is not None)


# -- the other resources: one table each, sorted by id ---------------------------------------


@dataclass(frozen=True, slots=True)
class _Table:
    select: str
    key_columns: tuple[str, ...]
    key_values: Callable[[CursorKey], tuple[Any, ...]]
    row_key: Callable[[Sequence[Any]], CursorKey]
    record: Callable[[Sequence[Any]], Any]
    tenant: Callable[[_Sql, Tenant], None]
    clause: Callable[[_Sql, Clause], None]


def _in(sql: _Sql, column: str, values: Sequence[Any]) -> str:
    """`column` is one of `values`: a plain equality for one value, so that an index on
    (column, time) still hands rows over in time order (`= ANY` would not)."""
    if len(values) == 1:
        return f"{column} = {sql.bind(values[0])}"
    return f"{column} = ANY({sql.bind(list(values))})"


def _string_condition(sql: _Sql, column: str, matches: Sequence[StringMatch]) -> str:
    alternatives = []
    for match in matches:
        if match.mode == "exact":
            alternatives.append(f"{column} = {sql.bind(match.text)}")
            continue
        escaped = match.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = (escaped + "%") if match.mode == "starts" else f"%{escaped}%"
        alternatives.append(f"{_FOLD.format(column)} LIKE {sql.bind(pattern)}")
    return " OR ".join(f"({a})" for a in alternatives) or "FALSE"


#: lower case without the accents of Latin-1 letters, as search._folded folds a value
_FOLD = "translate(lower({}), 'àáâãäåèéêëìíîïòóôõöùúûüýÿçñ', 'aaaaaaeeeeiiiiooooouuuuyycn')"


def _text_key(key: CursorKey) -> tuple[Any, ...]:
    if len(key) != 1 or not isinstance(key[0], str):
        raise SearchParameterError("_cursor", "not a page of this search")
    return (key[0],)


def _uuid_key(key: CursorKey) -> tuple[Any, ...]:
    try:
        return (UUID(str(_text_key(key)[0])),)
    except ValueError:
        raise SearchParameterError("_cursor", "not a page of this search") from None


def _patient_tenant(sql: _Sql, tenant: Tenant) -> None:
    if tenant.kind == "provider":
        sql.where(f"pt.organisation_id = {sql.bind(tenant.organisation_id)}")
    elif tenant.kind != "operator":
        sql.where("FALSE")


def _patient_clause(sql: _Sql, clause: Clause) -> None:
    column = {
        "_id": "pt.id",
        "identifier": "pt.identifier_hash",
        "organization": "pt.organisation_id",
    }
    sql.where(_in(sql, column[clause.name], clause.values))


def _device_tenant(sql: _Sql, tenant: Tenant) -> None:
    if tenant.kind == "startup":
        sql.where(f"dv.organisation_id = {sql.bind(tenant.organisation_id)}")
    elif tenant.kind == "provider":
        sql.where(
            "EXISTS (SELECT 1 FROM enrolments e JOIN patients p ON p.id = e.patient_id"  # noqa: S608 - values are bound
            " WHERE e.device_id = dv.device_id AND p.organisation_id = "
            f"{sql.bind(tenant.organisation_id)})"
        )


def _device_clause(sql: _Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name in ("_id", "identifier"):
        sql.where(_in(sql, "dv.device_id", values))
    elif name == "type":
        sql.where(_in(sql, "dv.device_type", values))
    elif name == "organization":
        sql.where(_in(sql, "dv.organisation_id", values))
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


def _everyone(sql: _Sql, tenant: Tenant) -> None:
    """Municipalities are public reference data."""


def _location_clause(sql: _Sql, clause: Clause) -> None:
    if clause.name in ("_id", "identifier"):
        sql.where(_in(sql, "m.istat_code", clause.values))
    elif clause.name == "name":
        sql.where(_string_condition(sql, "m.name", clause.values))
    else:
        raise NotImplementedError(f"Location search parameter {clause.name}")


def _organisation_tenant(sql: _Sql, tenant: Tenant) -> None:
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


def _organisation_clause(sql: _Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name == "_id":
        sql.where(_in(sql, "o.id", values))
    elif name == "identifier":
        sql.where(_in(sql, "o.fls_code", values))
    elif name == "name":
        sql.where(_string_condition(sql, "o.name", values))
    elif name == "type":
        types: Sequence[OrganisationTypeMatch] = values
        kinds = sorted({kind for t in types for kind in t.kinds})
        asl = any(t.asl for t in types)
        sql.where(_in(sql, "o.kind", kinds) + (" OR o.fls_code IS NOT NULL" if asl else ""))
    else:
        raise NotImplementedError(f"Organization search parameter {name}")


def _audit_tenant(sql: _Sql, tenant: Tenant) -> None:
    if not tenant.sees_everything:
        sql.where("FALSE")


def _audit_clause(sql: _Sql, clause: Clause) -> None:
    name, values = clause.name, clause.values
    if name == "_id":
        sql.where(_in(sql, "a.id", values))
    elif name == "date":
        sql.where(_date_condition(sql, "a.recorded", values))
    elif name == "agent":
        sql.where(_in(sql, "a.organisation_id", values))
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
        sql.where(_in(sql, "a.outcome", [int(v) for v in values]))
    elif name == "subtype":
        sql.where(_in(sql, "a.interaction", values))
    elif name == "action":
        sql.where(_in(sql, "a.action::text", values))
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


_TABLES: dict[str, _Table] = {
    "Patient": _Table(
        "SELECT pt.id, pt.organisation_id, pt.identifier_hash FROM patients pt",
        ("pt.id",),
        _uuid_key,
        lambda row: (str(row[0]),),
        lambda row: PatientRecord(*row),
        _patient_tenant,
        _patient_clause,
    ),
    "Device": _Table(
        "SELECT dv.device_id, dv.organisation_id, dv.device_type, dv.model, dv.serial,"
        " dv.firmware, dv.revoked_at FROM devices dv",
        ("dv.device_id",),
        _text_key,
        lambda row: (row[0],),
        lambda row: DeviceRecord(*row),
        _device_tenant,
        _device_clause,
    ),
    "Location": _Table(
        "SELECT m.istat_code, m.name, m.latitude, m.longitude, m.snai_class::text,"
        " m.snai_class_label FROM municipalities m",
        ("m.istat_code",),
        _text_key,
        lambda row: (row[0],),
        lambda row: MunicipalityRecord(*row),
        _everyone,
        _location_clause,
    ),
    "Organization": _Table(
        "SELECT o.id, o.kind, o.name, o.fls_code FROM organisations o",
        ("o.id",),
        _uuid_key,
        lambda row: (str(row[0]),),
        lambda row: OrganisationRecord(*row),
        _organisation_tenant,
        _organisation_clause,
    ),
    "AuditEvent": _Table(
        "SELECT a.id, a.recorded, a.organisation_id, a.token_id, a.action, a.interaction,"
        " a.resource_type, a.resource_id, a.operation, a.query, a.patient_ids, a.outcome,"
        " a.http_status, a.detail, a.results FROM fhir_audit_events a",
        ("a.recorded", "a.id"),
        _audit_key,
        lambda row: (micros(row[1]), str(row[0])),
        lambda row: AuditRow(*row),
        _audit_tenant,
        _audit_clause,
    ),
}

#: what a read by id looks up, per type: the id column and how a path id becomes its value
_ID_COLUMNS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Patient": ("pt.id", UUID),
    "Device": ("dv.device_id", str),
    "Location": ("m.istat_code", str),
    "Organization": ("o.id", UUID),
    "AuditEvent": ("a.id", UUID),
}


def _filters(resource_type: str, clauses: Sequence[Clause], tenant: Tenant) -> _Sql:
    table = _TABLES[resource_type]
    sql = _Sql()
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
    sql = _Sql()
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
    fetch_descending = _fetch_descending(descending, cursor)
    if cursor is not None:
        _keyset(sql, table.key_columns, table.key_values(cursor.key), fetch_descending)
    query = (
        f"{table.select} WHERE {sql.condition()}"
        f" ORDER BY {_order(table.key_columns, fetch_descending)} LIMIT {int(limit) + 1}"
    )
    return Statement(
        query,
        sql.params,
        lambda rows: _page(rows, limit, cursor, table.record, table.row_key),
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
        return Statement(query, sql.params, _first_int)
    return Statement(query, sql.params, lambda rows: _at_most(_first_int(rows), cap))
