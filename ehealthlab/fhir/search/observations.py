"""The SQL of Observations: reads by id, searches confined to the caller's tenant, totals
and $lastn, over the `readings` table.

One Observation is one stored reading, except blood pressure: the systolic and diastolic
readings of one inflation (same device, `at` and patient) are one panel. A panel
matches a search when either half does, and is represented by one *principal* row: its
systolic reading if that matches, else its diastolic one, carrying the other half (see
_principal_rows). So pages, counts (one group per Observation) and keyset cursors all work
on principal rows, and a page boundary can never split a pair. Halves with different patients
(an inflation split by an enrolment boundary, should clock corrections ever put one there)
are two panels, each in its own patient's record, rather than one revealing the other's value.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.mapping.codes import BLOOD_PRESSURE, DIASTOLIC, FHIR_BASE, SYSTOLIC
from ehealthlab.fhir.mapping.ids import ObservationKey
from ehealthlab.fhir.mapping.rows import BloodPressureReadings, ReadingRecord
from ehealthlab.fhir.search.criteria import Clause, MetricMatch, SearchParameterError
from ehealthlab.fhir.search.cursors import Cursor, CursorKey, from_micros, micros
from ehealthlab.fhir.search.sql import (
    TOTAL_CAP,
    Page,
    Row,
    Sql,
    Statement,
    at_most,
    date_condition,
    fetches_descending,
    first_int,
    keyset,
    one_of,
    order_by,
    page_of,
)

#: the name space of Observation identifiers, as ids.py defines it (a test checks that an
#: identifier search finds what ids.observation_identifier names)
OBSERVATION_IDENTIFIER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{FHIR_BASE}/Observation")

ObservationSource = ReadingRecord | BloodPressureReadings

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


def _metric_condition(sql: Sql, matches: Sequence[MetricMatch]) -> str:
    alternatives = []
    for match in matches:
        condition = one_of(sql, "r.metric", sorted(match.metrics))
        if match.device_types is not None:
            sql.uses_device_type = True
            condition += " AND " + one_of(sql, "dv.device_type", sorted(match.device_types))
        alternatives.append(f"({condition})")
    return " OR ".join(alternatives) or "FALSE"


def _only_value(clauses: Sequence[Clause], names: tuple[str, ...]) -> Any | None:
    """The value of a criterion naming one patient (or device), if the search has one."""
    for clause in clauses:
        if clause.name in names and clause.missing is None and len(clause.values) == 1:
            return clause.values[0]
    return None


def _observation_conditions(sql: Sql, clauses: Sequence[Clause], tenant: Tenant) -> None:
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
                sql.where(one_of(sql, "r.patient_id", clause.values))
        elif clause.name == "date":
            sql.where(date_condition(sql, "r.measured_at", clause.values))
        else:
            sql.where(_reading_condition(sql, clause))


def _reading_condition(sql: Sql, clause: Clause) -> str:
    """A criterion both halves of a panel meet alike."""
    name, values = clause.name, clause.values
    if name == "device":
        return one_of(sql, "r.device_id", values)
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
                f" AND {one_of(sql, 'r.metric', k.metrics)})"
                for k in keys
            )
            or "FALSE"
        )
    # a parameter declared in parameters.py but not written here is a bug
    raise NotImplementedError(f"Observation search parameter {name}")


def _observation_filters(clauses: Sequence[Clause], tenant: Tenant) -> Sql:
    sql = Sql()
    _observation_conditions(sql, clauses, tenant)
    return sql


def _key_order(alias: str, descending: bool) -> str:
    return order_by([f"{alias}.{column}" for column in _KEY_COLUMNS], descending)


def _principal_rows(sql: Sql, clauses: Sequence[Clause], *, descending: bool, limit: str) -> str:
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
        f" AND ({date_condition(sql, 's.measured_at', clause.values)})"
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
    sql: Sql, clauses: Sequence[Clause], tenant: Tenant, *, descending: bool, limit: str
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
    fetch_descending = fetches_descending(descending, cursor)
    if cursor is not None:
        keyset(sql, _OBSERVATION_KEY, _observation_key_values(cursor.key), fetch_descending)
    bound_limit = str(int(limit) + 1)  # a literal: see _principal_rows
    narrowed = _narrowed(clauses)
    if narrowed:
        rows = _principal_rows(sql, clauses, descending=fetch_descending, limit=bound_limit)
    else:
        rows = _broad_rows(sql, clauses, tenant, descending=fetch_descending, limit=bound_limit)
    return Statement(
        _RECORDS.format(rows=rows, order=_key_order("q", fetch_descending)),
        sql.params,
        lambda found: page_of(found, limit, cursor, _observation_source, _observation_key),
        custom_plan=not narrowed,
    )


def count_observations(
    clauses: Sequence[Clause], tenant: Tenant, *, accurate: bool = False
) -> Statement[int | None]:
    """How many Observations match: exactly with `accurate`; otherwise up to TOTAL_CAP,
    None beyond (a patient's year of readings takes longer to count than its page takes to
    answer, and a count of a whole store longer still)."""
    sql = Sql()
    _observation_conditions(sql, clauses, tenant)
    join = " JOIN devices dv ON dv.device_id = r.device_id" if sql.uses_device_type else ""
    matches = f"SELECT 1 FROM readings r{join} WHERE {sql.condition()}"  # noqa: S608 - values are bound
    grouped = f"SELECT count(*) FROM ({matches} GROUP BY {_OBSERVATION_GROUP}) g"  # noqa: S608 - values are bound
    custom = not _narrowed(clauses)
    if accurate:
        return Statement(grouped, sql.params, first_int, custom_plan=custom)
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
        lambda rows: at_most(first_int(rows), cap),
        custom_plan=custom,
    )


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
        sql.conditions = [*shared, one_of(sql, "r.metric", members)]
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
