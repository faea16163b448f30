"""From the report's evaluations to its figures: which groups may be drawn (a group below the
publication threshold never is), and the numbers each figure plots. Pure."""

from __future__ import annotations

from collections.abc import Callable

from ehealthlab.evaluation.compare import difference
from ehealthlab.evaluation.compute import AREA_LABELS, GroupResult
from ehealthlab.evaluation.dataset import Dataset
from ehealthlab.evaluation.registry import BY_ID, INDICATORS, Kind, Mean
from ehealthlab.evaluation.report import figures, tables
from ehealthlab.evaluation.report import formatting as fmt
from ehealthlab.evaluation.report.economy import ScaleUp
from ehealthlab.evaluation.report.evaluations import Evaluations
from ehealthlab.evaluation.report.tables import Row, Table, areas
from ehealthlab.evaluation.snai_reference import SNAI_CLASSES

SERIES = (("all", "All municipalities"), ("centre", AREA_LABELS["centre"]),
          ("inner", AREA_LABELS["inner"]))  # fmt: skip


def _published(ev: Evaluations, group: GroupResult | None) -> bool:
    return group is not None and not ev.hidden(group)


def _point(value: object) -> figures.Point:
    if isinstance(value, Mean):
        low, high = value.ci95 if value.ci95 else (None, None)
        return figures.Point(value.value, low, high)
    return figures.Point(fmt.plain(value))  # type: ignore[arg-type]


def over_time(ev: Evaluations, *, simulated: bool) -> tuple[str | None, Table]:
    """Adherence per step for all, centres and inner areas: the figure and its data table."""
    labels = [step.label for step, _ in ev.series]
    series: dict[str, tuple[str, list[figures.Point]]] = {}
    rows = []
    for key, label in SERIES:
        points = []
        for _, evaluation in ev.series:
            group = evaluation.all if key == "all" else evaluation.groups.get(key)
            published = _published(ev, group)
            value = group.values.get("adherence") if group is not None and published else None
            points.append(_point(value))
        if any(p.value is not None for p in points):
            series[key] = (label, points)
    for step, evaluation in ev.series:
        cells = []
        for key, _ in SERIES:
            group = evaluation.all if key == "all" else evaluation.groups.get(key)
            if group is None:
                cells += [fmt.Cell("0", 0.0), fmt.Cell(fmt.NO_DATA, css="nodata")]
            elif ev.hidden(group):
                cells += [fmt.Cell(ev.band, css="band"), fmt.suppressed_cell()]
            else:
                cells += [fmt.Cell(fmt.count(group.patients), float(group.patients)),
                          fmt.cell("adherence", group.values.get("adherence"))]  # fmt: skip
        rows.append(Row(f"{step.start:%d %b} – {step.end:%d %b %Y}", cells))
    table = Table(
        "Adherence per step, with the patients enrolled in it",
        ["Step", *(["Patients", "Adherence"] * len(SERIES))],
        rows,
        ("adherence",),
        groups=[("", 1), *((label, 2) for _, label in SERIES)],
    )
    if not series:
        return None, table
    svg = figures.adherence_over_time(labels, series, key="time", simulated=simulated)
    return svg, table


def _class_panels(
    ev: Evaluations, indicators: tuple[str, ...]
) -> tuple[list[str], list[str], list[figures.Panel]]:
    """Per SNAI class A-F, its note (patients, their band, or none) and each indicator's
    value, None where nothing may be drawn."""
    notes = []
    values: dict[str, list[float | None]] = {i: [] for i in indicators}
    for snai in SNAI_CLASSES:
        group = ev.snai_class.groups.get(snai)
        if group is None:
            notes.append("none")
        elif ev.hidden(group):
            notes.append(f"n {ev.band}")
        else:
            notes.append(f"n = {group.patients}")
        for indicator_id in indicators:
            shown = group is not None and not ev.hidden(group)
            value = fmt.plain(group.values.get(indicator_id)) if group and shown else None
            values[indicator_id].append(value)
    panels = [
        figures.Panel(tables.header(i), values[i], _formatter(i), share=BY_ID[i].unit == "1")
        for i in indicators
    ]
    return [f"SNAI {c}" for c in SNAI_CLASSES], notes, panels


def _formatter(indicator_id: str) -> Callable[[float], str]:
    def text(value: float) -> str:
        return fmt.number(indicator_id, value)

    return text


def _bar_colours() -> list[str]:
    return [figures.COLOURS["inner" if c in "DEF" else "centre"] for c in SNAI_CLASSES]


def broadband(ev: Evaluations, *, simulated: bool) -> str:
    labels, notes, panels = _class_panels(ev, ("loss_rate", "latency_p95_s"))
    alt = "Bar charts of loss rate and 95th-percentile latency per SNAI class A to F: " + _alt(
        labels, notes, panels
    )
    return figures.per_group_bars(labels, notes, panels, alt=alt, key="broadband",
                                  simulated=simulated, colours=_bar_colours())  # fmt: skip


def alert_burden(ev: Evaluations, *, simulated: bool) -> str:
    labels, notes, panels = _class_panels(
        ev, ("alerts_per_patient_week", "alerts_ack_within_24h_share")
    )
    alt = "Bar charts of alerts per patient-week and alerts answered within 24 h per SNAI " \
        "class: " + _alt(labels, notes, panels)  # fmt: skip
    return figures.per_group_bars(labels, notes, panels, alt=alt, key="alerts",
                                  simulated=simulated, colours=_bar_colours())  # fmt: skip


def _alt(labels: list[str], notes: list[str], panels: list[figures.Panel]) -> str:
    parts = []
    for index, (label, note) in enumerate(zip(labels, notes, strict=True)):
        shown = [f"{p.title} {p.text(v)}" for p in panels if (v := p.values[index]) is not None]
        parts.append(f"{label} ({note}): {', '.join(shown) or 'not shown'}")
    return "; ".join(parts)


def municipalities(ev: Evaluations, data: Dataset, *, simulated: bool) -> str | None:
    area_of = {m.istat_code: m.area for m in data.municipalities}
    points = []
    for group in ev.municipality.groups.values():
        if ev.hidden(group):
            continue
        adherence = fmt.plain(group.values.get("adherence"))
        loss = fmt.plain(group.values.get("loss_rate"))
        if adherence is not None and loss is not None:
            points.append((group.label, adherence, loss, area_of.get(group.key, "centre")))
    if not points:
        return None
    return figures.adherence_against_loss(points, key="places", simulated=simulated)


def comparison(ev: Evaluations, seed: int, *, simulated: bool) -> str | None:
    """The differences of the shares and mean adherence (all in percentage points)."""
    inner, centre = areas(ev)
    if inner is None or centre is None or not (_published(ev, inner) and _published(ev, centre)):
        return None
    rows = []
    for indicator in INDICATORS:
        if indicator.unit != "1" or indicator.kind not in {Kind.RATIO, Kind.MEAN}:
            continue
        d = difference(inner, centre, indicator.id, seed)
        if d.difference is not None and d.ci95 is not None:
            rows.append((indicator.title, d.difference, *d.ci95))
    if not rows:
        return None
    return figures.differences(rows, key="compare", simulated=simulated)


def scale_up(result: ScaleUp, *, simulated: bool) -> str | None:
    done = [p for p in result.projections if p.projected]
    if not done:
        return None
    return figures.cost_against_avoided(
        [p.snai_class for p in done],
        [p.cost_eur_per_year or 0.0 for p in done],
        [p.avoided_eur_per_year or 0.0 for p in done],
        key="scaleup",
        simulated=simulated,
    )
