"""Every query a dashboard sends, read out of its JSON and run as Grafana would run it: the
template variables filled from their own queries, the macros expanded (`macros.py`), on a
connection logged in as the organisation's role. The tests run every panel this way, and the
benchmark times them; neither keeps a second list of the dashboards' SQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection

from ehealthlab.dashboards.macros import expand
from ehealthlab.dashboards.query_context import QueryContext, interval_for
from ehealthlab.errors import InvalidInputError

Variables = Mapping[str, str | Sequence[str]]


class DashboardQueryError(InvalidInputError):
    """A dashboard's query cannot be run as Grafana would run it, or returns what its panel
    cannot draw."""


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    title: str
    panel_type: str
    ref_id: str
    raw_sql: str
    fmt: str
    max_data_points: int
    min_interval: str

    @property
    def name(self) -> str:
        return f"{self.dashboard}#{self.panel_id} {self.title} [{self.ref_id}]"


@dataclass(frozen=True)
class QueryVariable:
    name: str
    query: str
    multi: bool
    include_all: bool


@dataclass(frozen=True)
class PanelResult:
    query: PanelQuery
    sql: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    seconds: float


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or ())  # a collapsed row keeps its panels


def panel_queries(board: Mapping[str, Any]) -> list[PanelQuery]:
    """Every SQL target of every panel, rows' panels included, in the dashboard's order."""
    found = []
    for panel in _panels(board.get("panels") or ()):
        for target in panel.get("targets") or ():
            if target.get("hide"):
                continue
            found.append(
                PanelQuery(
                    dashboard=str(board["uid"]),
                    panel_id=int(panel["id"]),
                    title=str(panel.get("title") or ""),
                    panel_type=str(panel.get("type") or ""),
                    ref_id=str(target["refId"]),
                    raw_sql=str(target["rawSql"]),
                    fmt=str(target.get("format") or "time_series"),
                    max_data_points=int(panel.get("maxDataPoints") or 500),
                    min_interval=str(panel.get("interval") or "1m"),
                )
            )
    return found


def query_variables(board: Mapping[str, Any]) -> list[QueryVariable]:
    return [
        QueryVariable(
            name=str(v["name"]),
            query=str(v["query"]),
            multi=bool(v.get("multi")),
            include_all=bool(v.get("includeAll")),
        )
        for v in (board.get("templating") or {}).get("list") or ()
        if v.get("type") == "query"
    ]


def query_context(
    time_from: datetime,
    time_to: datetime,
    variables: Variables,
    *,
    timescaledb: bool,
    max_data_points: int = 500,
    min_interval: str = "1m",
) -> QueryContext:
    interval = interval_for(
        time_from, time_to, max_data_points=max_data_points, min_interval=min_interval
    )
    return QueryContext(time_from, time_to, interval, variables, timescaledb)


def resolve_variables(
    conn: Connection[Any],
    board: Mapping[str, Any],
    time_from: datetime,
    time_to: datetime,
    *,
    timescaledb: bool,
    chosen: Variables | None = None,
) -> dict[str, str | list[str]]:
    """Each variable's values from its own query, in order (a later one may use an earlier
    one), as a dashboard loads: a multi-value or "All" variable takes every value, a single
    one its first, unless ``chosen`` names the value."""
    values: dict[str, str | list[str]] = {}
    for variable in query_variables(board):
        context = query_context(time_from, time_to, values, timescaledb=timescaledb)
        cursor = conn.execute(expand(variable.query, context).encode())
        names = [c.name for c in cursor.description or ()]
        column = names.index("__value") if "__value" in names else 0
        options = [str(row[column]) for row in cursor.fetchall()]
        if chosen is not None and variable.name in chosen:
            wanted = chosen[variable.name]
            values[variable.name] = wanted if isinstance(wanted, str) else list(wanted)
        elif variable.multi or variable.include_all:
            values[variable.name] = options
        elif options:
            values[variable.name] = options[0]
        else:
            raise DashboardQueryError(
                f"{board['uid']}: variable ${variable.name} has no value to choose"
            )
    return values


def run_panel(
    conn: Connection[Any],
    query: PanelQuery,
    time_from: datetime,
    time_to: datetime,
    variables: Variables,
    *,
    timescaledb: bool,
) -> PanelResult:
    """The panel's query as PostgreSQL receives it from Grafana, run and checked against what
    its format needs (a time series has a ``time`` column)."""
    context = query_context(
        time_from,
        time_to,
        variables,
        timescaledb=timescaledb,
        max_data_points=query.max_data_points,
        min_interval=query.min_interval,
    )
    expanded = expand(query.raw_sql, context)
    started = time.perf_counter()
    cursor = conn.execute(expanded.encode())
    rows = cursor.fetchall()
    seconds = time.perf_counter() - started
    columns = tuple(c.name for c in cursor.description or ())
    if query.fmt == "time_series" and "time" not in columns:
        raise DashboardQueryError(f"{query.name}: a time series needs a 'time' column")
    return PanelResult(query, expanded, columns, rows, seconds)
