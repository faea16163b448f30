"""The SQL behind /fhir, the part every resource shares: statements and how they run,
conditions written with bound parameters, totals and keyset pages. The SQL of each resource
type is in observations.py, tables.py and audit_events.py; they return the records of
mapping/rows.py (and audit_events.AuditRow); JSON is built elsewhere.

Every value reaches PostgreSQL as a bound parameter; the SQL text depends only on which
criteria a search has, so psycopg prepares each shape of search once per connection.

Pages are keyset pages: rows after (or before) the sort key of the last (first) row shown,
so page 1,000 costs what page 1 costs. Sort keys are unique: Observations by (measured_at,
device_id, metric, at), audit events by (recorded, id), everything else by id.

Each function returns a `Statement`: one SQL statement and what its rows mean, so that a
request sends all of its statements at once (`run`: one round trip, pipelined) on the API's
asynchronous connections, which plan generically (see `GENERIC_PLANS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg

from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.search.criteria import Clause, DateRange, StringMatch
from ehealthlab.fhir.search.cursors import Cursor, CursorKey

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


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search: records in display order, and the sort keys of the first and
    last (where the previous and next pages start; None when the page is empty)."""

    records: list[Any]
    first_key: CursorKey | None
    last_key: CursorKey | None
    has_next: bool
    has_previous: bool


class Sql:
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


# -- conditions -----------------------------------------------------------------------------


def one_of(sql: Sql, column: str, values: Sequence[Any]) -> str:
    """`column` is one of `values`: a plain equality for one value, so that an index on
    (column, time) still hands rows over in time order (`= ANY` would not)."""
    if len(values) == 1:
        return f"{column} = {sql.bind(values[0])}"
    return f"{column} = ANY({sql.bind(list(values))})"


def date_condition(sql: Sql, column: str, ranges: Sequence[DateRange]) -> str:
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


def string_condition(sql: Sql, column: str, matches: Sequence[StringMatch]) -> str:
    alternatives = []
    for match in matches:
        if match.mode == "exact":
            alternatives.append(f"{column} = {sql.bind(match.text)}")
            continue
        escaped = match.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = (escaped + "%") if match.mode == "starts" else f"%{escaped}%"
        alternatives.append(f"{_FOLD.format(column)} LIKE {sql.bind(pattern)}")
    return " OR ".join(f"({a})" for a in alternatives) or "FALSE"


#: lower case without the accents of Latin-1 letters, as values._folded folds a value
_FOLD = "translate(lower({}), 'àáâãäåèéêëìíîïòóôõöùúûüýÿçñ', 'aaaaaaeeeeiiiiooooouuuuyycn')"


# -- totals ---------------------------------------------------------------------------------

#: a search's total, unless asked for accurately, is counted up to this many matches (no
#: total beyond): finding that a patient has more costs a scan of 2,001 index entries
#: (0.15 ms), counting a year of their readings 15 ms, more than answering the page
TOTAL_CAP = 1_000


def first_int(rows: list[Row]) -> int | None:
    return None if not rows or rows[0][0] is None else int(rows[0][0])


def at_most(found: int | None, cap: int) -> int | None:
    return found if found is not None and found <= cap else None


# -- keyset pages -----------------------------------------------------------------------------


def fetches_descending(descending: bool, cursor: Cursor | None) -> bool:
    """The order rows are fetched in: reversed when walking back to a previous page."""
    backwards = cursor is not None and not cursor.after
    return descending != backwards


def keyset(sql: Sql, key_columns: Sequence[str], key: tuple[Any, ...], descending: bool) -> None:
    """Rows strictly after `key` in the fetch order."""
    operator = "<" if descending else ">"
    columns = ", ".join(key_columns)
    bound = ", ".join(sql.bind(value) for value in key)
    # the first column alone as well: an index on it can seek there
    sql.where(f"{key_columns[0]} {operator}= {sql.bind(key[0])}")
    sql.where(f"({columns}) {operator} ({bound})")


def order_by(key_columns: Sequence[str], descending: bool) -> str:
    direction = " DESC" if descending else ""
    return ", ".join(column + direction for column in key_columns)


def page_of(
    rows: Sequence[Sequence[Any]],
    limit: int,
    cursor: Cursor | None,
    record: Callable[[Sequence[Any]], Any],
    key: Callable[[Sequence[Any]], CursorKey],
) -> Page:
    """A page from up to limit + 1 rows fetched in fetches_descending order."""
    more = len(rows) > limit
    shown = rows[:limit]
    records = [record(row) for row in shown]
    first, last = (key(shown[0]), key(shown[-1])) if shown else (None, None)
    if cursor is not None and not cursor.after:
        records.reverse()
        return Page(records, last, first, has_next=True, has_previous=more)
    return Page(records, first, last, has_next=more, has_previous=cursor is not None)


# -- resources kept in one table each ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """A resource kept in one table (tables.py, audit_events.py): its SELECT, its sort key
    (the columns, the values of a cursor's key, a row's key), its record, and the conditions
    of the tenant and of each criterion."""

    select: str
    key_columns: tuple[str, ...]
    key_values: Callable[[CursorKey], tuple[Any, ...]]
    row_key: Callable[[Sequence[Any]], CursorKey]
    record: Callable[[Sequence[Any]], Any]
    tenant: Callable[[Sql, Tenant], None]
    clause: Callable[[Sql, Clause], None]
