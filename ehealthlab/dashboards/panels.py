"""Building blocks every dashboard shares, so that the four dashboards differ only in what
they show: the data source each organisation provisions, SQL targets, a grid that places
panels, query variables, and the one JSON form Grafana is given.

Every organisation's Grafana has one PostgreSQL data source per dashboard kind, with the same
uid everywhere (``ehl-provider``, ``ehl-startup``, ``ehl-lab``) but its own database role
(`roles.py`): one dashboard JSON serves every provider, and what a provider sees is decided by
PostgreSQL, not by the dashboard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from grafanalib.core import (
    Dashboard,
    DashboardLink,
    GridPos,
    SqlTarget,
    Template,
    Templating,
    Time,
)

from ehealthlab.dashboards.roles import Kind

#: Grafana 11's id of its bundled PostgreSQL data source (older releases said ``postgres``)
DATASOURCE_TYPE = "grafana-postgresql-datasource"
#: the dashboard model version Grafana 11.0 writes; 11 and 12 read it without migrating
SCHEMA_VERSION = 39
GRID_WIDTH = 24

Format = Literal["time_series", "table"]


def datasource_uid(kind: Kind) -> str:
    """The uid of the data source every organisation of this kind provisions."""
    return f"ehl-{kind}"


def datasource(kind: Kind) -> dict[str, str]:
    """A panel's or a target's reference to that data source."""
    return {"type": DATASOURCE_TYPE, "uid": datasource_uid(kind)}


def sql(kind: Kind, raw_sql: str, *, ref_id: str = "A", fmt: Format = "table") -> SqlTarget:
    """A raw-SQL target. ``fmt`` is Grafana's: ``time_series`` wants a ``time`` column."""
    return SqlTarget(rawSql=raw_sql.strip(), format=fmt, refId=ref_id, datasource=datasource(kind))


def query_variable(
    kind: Kind,
    name: str,
    label: str,
    query: str,
    *,
    multi: bool = False,
    include_all: bool = False,
) -> Template:
    """A template variable filled by SQL (``__text``/``__value`` columns name and key it).
    Refreshed when the dashboard loads, so a new patient appears without a rebuild."""
    return Template(
        name=name,
        label=label,
        query=query.strip(),
        dataSource=datasource(kind),
        type="query",
        multi=multi,
        includeAll=include_all,
        refresh=1,
        sort=1,
    )


@dataclass
class Grid:
    """Places panels left to right, top to bottom, on Grafana's 24-column grid, and numbers
    them: ids are unique and stable because the order of placing is the code's order."""

    _x: int = 0
    _y: int = 0
    _row_height: int = 0
    _next_id: int = 1
    panels: list[Any] = field(default_factory=list)

    def place(self, panel: Any, *, w: int, h: int) -> Any:
        if not 0 < w <= GRID_WIDTH:
            raise ValueError(f"a panel is 1 to {GRID_WIDTH} columns wide, not {w}")
        if self._x + w > GRID_WIDTH:
            self.new_row()
        panel.gridPos = GridPos(h=h, w=w, x=self._x, y=self._y)
        panel.id = self._next_id
        self._next_id += 1
        self._x += w
        self._row_height = max(self._row_height, h)
        self.panels.append(panel)
        return panel

    def new_row(self) -> None:
        self._x, self._y, self._row_height = 0, self._y + self._row_height, 0

    def banner(self, panel: Any, *, h: int) -> Any:
        """A full-width panel above all the others, numbered after them: added last, it
        changes no other panel's id."""
        for placed in self.panels:
            placed.gridPos = GridPos(
                h=placed.gridPos.h, w=placed.gridPos.w, x=placed.gridPos.x, y=placed.gridPos.y + h
            )
        self._y += h
        panel.gridPos = GridPos(h=h, w=GRID_WIDTH, x=0, y=0)
        panel.id = self._next_id
        self._next_id += 1
        self.panels.insert(0, panel)
        return panel


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    grid: Grid,
    variables: Sequence[Template] = (),
    time_from: str = "now-24h",
    refresh: str = "1m",
    tags: Iterable[str] = (),
    links: Sequence[DashboardLink] = (),
) -> Dashboard:
    """A dashboard in the pilot's time zone (what a nurse in Piedmont reads on the axis)."""
    return Dashboard(
        uid=uid,
        title=title,
        description=description,
        panels=grid.panels,
        templating=Templating(list=list(variables)),
        time=Time(time_from, "now"),
        timezone="Europe/Rome",
        refresh=refresh,
        tags=sorted({"ehealthlab", *tags}),
        links=list(links),
        schemaVersion=SCHEMA_VERSION,
        editable=False,
    )


def to_json_data(board: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's model: plain JSON types only."""
    data: dict[str, Any] = json.loads(to_json(board))
    return data


def to_json(board: Dashboard) -> str:
    """The one serialisation written to disk: sorted keys, so a rebuild of unchanged code is
    byte for byte the same file (and a diff shows only what changed)."""
    from grafanalib._gen import DashboardEncoder  # noqa: PLC0415  # grafanalib's own encoder

    return json.dumps(board.to_json_data(), sort_keys=True, indent=2, cls=DashboardEncoder) + "\n"
