"""The pilot dashboard for CMTo: the indicators as the evaluation computed them.

Every number comes out of the documents `ehealthlab publish-evaluation` keeps (the view
``evaluations``: the JSON of `ehealthlab evaluate`); the SQL only unpacks that JSON, so a
panel can never disagree with the report or the MeasureReports by a second version of a
definition. The current document of a population, grouping and period is the latest
computed. Small groups are published as indicators.md says: a group of fewer patients than
its document's ``min_group_patients`` shows its label and the band (``< 5``), every value
NULL, never the number.
"""

from __future__ import annotations

from typing import Any

import attr
from grafanalib.core import Dashboard, Panel, Stat, Table, Template, TimeSeries

from ehealthlab.dashboards.panels import Grid, dashboard, datasource, query_variable, sql
from ehealthlab.dashboards.roles import Kind
from ehealthlab.evaluation.registry import INDICATORS

KIND: Kind = "lab"
UID = "ehl-pilot"
#: Turin, where the map opens: the whole Metropolitan City fits at this zoom
TURIN = (45.07, 7.69)
MAP_ZOOM = 8
#: the indicators the headline stat shows (their intervals are in the table beside it)
HEADLINE = ("patients_enrolled", "adherence", "completeness", "loss_rate",
            "alerts_per_patient_week")  # fmt: skip


#: the values of the group `all` in the current document
EVERYONE = "c.document->'all'"


def _group(key: str) -> str:
    """The values of one group of the current document."""
    return f"c.document->'groups'->{_literal(key)}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _registry_rows() -> str:
    """The registry's indicators as SQL rows (order, id, name, unit): names, not numbers."""
    return ", ".join(
        f"({n}, {_literal(i.id)}, {_literal(i.title)}, {_literal(i.unit)})"
        for n, i in enumerate(INDICATORS)
    )


def _number(json: str) -> str:
    """An indicator's value out of its JSON: a number, or the ``value`` of a mean."""
    return (
        f"CASE jsonb_typeof({json}) WHEN 'object' THEN ({json}->>'value')::float8"
        f" WHEN 'number' THEN ({json}#>>'{{}}')::float8 END"
    )


def _interval(json: str, end: int) -> str:
    return f"({json}->'ci95'->>{end})::float8"


def _hidden(values: str) -> str:
    """True for a group too small to publish (indicators.md, small-group protection)."""
    return (
        f"COALESCE(({values}->>'patients_enrolled')::int, 0)"
        " < (c.document->>'min_group_patients')::int"
    )


def _published(json: str, hidden: str, alias: str) -> str:
    """Value and interval of one indicator's JSON as published: NULL for a small group."""
    return ",\n  ".join(
        f'CASE WHEN NOT {hidden} THEN {expression} END AS "{alias}{suffix}"'
        for expression, suffix in (
            (_number(json), ""),
            (_interval(json, 0), " ci95 low"),
            (_interval(json, 1), " ci95 high"),
        )
    )


def _current(grouping: str) -> str:
    """The current document of the chosen population and period for one grouping."""
    return f"""WITH c AS (
  SELECT e.document FROM evaluations e
  WHERE e.population = '$population' AND e.grouping = '{grouping}'
    AND e.period_from = split_part('$period', '/', 1)::date
    AND e.period_to = split_part('$period', '/', 2)::date
  ORDER BY e.computed_at DESC LIMIT 1)"""  # noqa: S608 - constant SQL


def _groups_sql(grouping: str, *, extra: str = "", join: str = "") -> str:
    """One row per group of a grouping: label, patients (or only the band), status, and the
    chosen indicator with its interval."""
    return f"""{_current(grouping)}
SELECT g.key AS "group", COALESCE(c.document->'labels'->>g.key, g.key) AS label,{extra}
  CASE WHEN s.hidden THEN '< ' || (c.document->>'min_group_patients')
       ELSE g.value->>'patients_enrolled' END AS patients,
  CASE WHEN s.hidden THEN 'suppressed' ELSE '' END AS status,
  {_published("g.value->'$indicator'", "s.hidden", "value")}
FROM c CROSS JOIN LATERAL jsonb_each(c.document->'groups') AS g
CROSS JOIN LATERAL (SELECT {_hidden("g.value")} AS hidden) AS s{join}
ORDER BY g.key"""  # noqa: S608 - constant SQL


def headline_table() -> Table:
    query = f"""{_current("all")}
SELECT COALESCE(i.name, a.key) AS indicator, i.unit,
  {_published("a.value", "s.hidden", "value")}
FROM c CROSS JOIN LATERAL (SELECT {_hidden(EVERYONE)} AS hidden) AS s
CROSS JOIN LATERAL jsonb_each(c.document->'all') AS a
LEFT JOIN (VALUES {_registry_rows()}) AS i(ord, id, name, unit) ON i.id = a.key
ORDER BY i.ord NULLS LAST, a.key"""  # noqa: S608 - constant SQL
    return Table(
        title="Indicators of all patients, with 95% bootstrap intervals",
        description="The evaluation's own figures (grouping all) for the chosen period.",
        dataSource=datasource(KIND),
        targets=[sql(KIND, query)],
    )


def headline_stat() -> Stat:
    names = {i.id: i.title for i in INDICATORS}
    columns = ",\n  ".join(
        f"CASE WHEN NOT s.hidden THEN {_number(EVERYONE + '->' + _literal(key))}"
        f' END AS "{names[key]}"'
        for key in HEADLINE
    )
    query = f"""{_current("all")}
SELECT {columns}
FROM c CROSS JOIN LATERAL (SELECT {_hidden(EVERYONE)} AS hidden) AS s"""  # noqa: S608 - constant SQL
    return Stat(
        title="Headline",
        description="All patients of the chosen period, as the evaluation computed them.",
        dataSource=datasource(KIND),
        targets=[sql(KIND, query)],
        reduceCalc="lastNotNull",
        textMode="value_and_name",
    )


@attr.s(auto_attribs=True)
class Geomap:
    """Grafana's geomap panel (grafanalib 0.7.1 has none): one markers layer placed by the
    ``latitude``/``longitude`` columns, coloured by ``color_field``; the rest of the panel
    JSON is grafanalib's own (`Panel.panel_json`)."""

    title: str
    description: str
    targets: list[Any]
    layer_name: str = "Markers"
    color_field: str = "value"
    text_field: str = "label"
    unit: str = "none"
    center: tuple[float, float] = TURIN
    zoom: int = MAP_ZOOM
    #: set by `Grid.place`
    gridPos: Any = None  # noqa: N815 - Grafana's name, as Grid sets it
    id: int | None = None

    def to_json_data(self) -> dict[str, Any]:
        layer = {
            "type": "markers",
            "name": self.layer_name,
            "tooltip": True,
            "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
            "config": {
                "showLegend": True,
                "style": {
                    "color": {"field": self.color_field, "fixed": "text"},
                    "size": {"fixed": 10, "min": 4, "max": 20},
                    "opacity": 0.8,
                    "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                    "text": {"mode": "field", "field": self.text_field, "fixed": ""},
                    "textConfig": {"fontSize": 10, "offsetY": -14, "textAlign": "center"},
                },
            },
        }
        panel = Panel(
            title=self.title,
            description=self.description,
            dataSource=datasource(KIND),
            targets=self.targets,
            gridPos=self.gridPos,
            id=self.id,
        )
        data: dict[str, Any] = panel.panel_json(
            {
                "type": "geomap",
                "options": {
                    "view": {"id": "coords", "lat": self.center[0], "lon": self.center[1],
                             "zoom": self.zoom, "allLayers": True},
                    "controls": {"showZoom": True, "mouseWheelZoom": True,
                                 "showAttribution": True},
                    "basemap": {"type": "default", "name": "Basemap", "config": {}},
                    "layers": [layer],
                    "tooltip": {"mode": "details"},
                },
                "fieldConfig": {
                    "defaults": {"color": {"mode": "continuous-BlYlRd"}, "unit": self.unit},
                    "overrides": [],
                },
            }
        )  # fmt: skip
        return data


def municipalities_map() -> Geomap:
    query = _groups_sql(
        "municipality",
        extra=" m.latitude, m.longitude,",
        join=" JOIN municipalities m ON m.istat_code = g.key",
    )
    return Geomap(
        title="Municipalities by $indicator",
        description="Each municipality of the period's patients, coloured by the chosen "
        "indicator (adherence by default, or loss rate); a group of too few patients shows "
        "its name and band, no value.",
        targets=[sql(KIND, query)],
        layer_name="Municipalities",
    )


def areas_table() -> Table:
    """Inner areas (SNAI D-F) beside centres (A-C), every indicator a row."""
    sides = ",\n  ".join(
        _published(f"{_group(side)}->i.id", f"s_{side}.hidden", side)
        for side in ("centre", "inner")
    )
    hidden = "".join(
        f"\nCROSS JOIN LATERAL (SELECT {_hidden(_group(side))} AS hidden) AS s_{side}"
        for side in ("centre", "inner")
    )
    query = f"""{_current("area")}
SELECT i.name AS indicator, i.unit,
  {sides}
FROM c CROSS JOIN (VALUES {_registry_rows()}) AS i(ord, id, name, unit){hidden}
WHERE c.document->'all'->i.id IS NOT NULL
ORDER BY i.ord"""  # noqa: S608 - constant SQL
    return Table(
        title="Inner areas against centres",
        description="The evaluation's grouping area: inner = SNAI D, E, F; centre = A, B, C. "
        "A side with too few patients shows no values.",
        dataSource=datasource(KIND),
        targets=[sql(KIND, query)],
    )


def groups_table(grouping: str, title: str, description: str) -> Table:
    return Table(
        title=title,
        description=description,
        dataSource=datasource(KIND),
        targets=[sql(KIND, _groups_sql(grouping))],
    )


def weekly_trend() -> TimeSeries:
    """The chosen indicator of all patients, one point per week published (Monday to
    Monday, grouping all: `publish-evaluation` publishes each whole week of its period)."""
    query = f"""WITH weeks AS (
  SELECT DISTINCT ON (e.period_from) e.period_from, e.document
  FROM evaluations e
  WHERE e.population = '$population' AND e.grouping = 'all'
    AND e.period_to = e.period_from + 7 AND extract(isodow FROM e.period_from) = 1
    AND e.period_to >= $__timeFrom()::timestamptz::date
    AND e.period_from <= $__timeTo()::timestamptz::date
  ORDER BY e.period_from, e.computed_at DESC)
SELECT (c.period_from::timestamp AT TIME ZONE 'Europe/Rome') AS "time",
  {_published("c.document->'all'->'$indicator'", "s.hidden", "$indicator")}
FROM weeks c CROSS JOIN LATERAL (SELECT {_hidden(EVERYONE)} AS hidden) AS s
ORDER BY 1"""  # noqa: S608 - constant SQL
    return TimeSeries(
        title="$indicator by week",
        description="All patients, week by week (Monday to Monday) as the evaluation computed "
        "each week; the band is the 95% bootstrap interval of a mean.",
        dataSource=datasource(KIND),
        targets=[sql(KIND, query, fmt="time_series")],
        showPoints="always",
    )


def _variables() -> list[Template]:
    population = query_variable(
        KIND,
        "population",
        "Population",
        "SELECT DISTINCT population AS __text, population AS __value FROM evaluations ORDER BY 1",
    )
    # the periods published whole (every grouping), not the weeks published for the trend
    period = query_variable(
        KIND,
        "period",
        "Period",
        """SELECT DISTINCT to_char(period_from, 'YYYY-MM-DD') || ' to '
  || to_char(period_to - 1, 'YYYY-MM-DD') AS __text,
  to_char(period_from, 'YYYY-MM-DD') || '/' || to_char(period_to, 'YYYY-MM-DD') AS __value
FROM evaluations WHERE population = '$population' AND grouping = 'municipality'
ORDER BY 2 DESC""",
    )
    period.sort = 2  # alphabetical, descending: the latest period is the default
    indicator = query_variable(
        KIND,
        "indicator",
        "Indicator",
        f"SELECT name AS __text, id AS __value FROM (VALUES {_registry_rows()})"  # noqa: S608 - constant SQL
        " AS i(ord, id, name, unit) ORDER BY 1",
    )
    return [population, period, indicator]


def pilot_dashboard() -> Dashboard:
    grid = Grid()
    grid.place(headline_stat(), w=24, h=4)
    grid.place(headline_table(), w=12, h=14)
    grid.place(municipalities_map(), w=12, h=14)
    grid.place(weekly_trend(), w=12, h=9)
    grid.place(areas_table(), w=12, h=9)
    grid.place(
        groups_table(
            "snai_class",
            "$indicator by SNAI class",
            "The evaluation's grouping snai_class (A centre of service to F ultra-peripheral).",
        ),
        w=12,
        h=8,
    )
    grid.place(
        groups_table(
            "mini_pilot",
            "$indicator by mini-pilot",
            "The enrolled days of each mini-pilot's start-ups, municipalities and dates; "
            "a patient may count in several.",
        ),
        w=12,
        h=8,
    )
    return dashboard(
        uid=UID,
        title="Pilot indicators (CMTo)",
        description="The pilot's indicators as `ehealthlab publish-evaluation` computed them; "
        "groups of too few patients suppressed.",
        grid=grid,
        variables=_variables(),
        time_from="now-1y",
        refresh="1h",
        tags=["pilot", "cmto"],
    )
