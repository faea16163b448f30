"""The report's tables: headline, municipalities, inner areas against centres, broadband per
SNAI class, alert burden, mini-pilots and the appendix of every indicator. Each is plain data
(`Table` of `Row`s of `Cell`s) the template lays out; a group below the publication threshold
shows only its band (`< 5`) and `suppressed`, never a number. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ehealthlab.evaluation.compare import difference
from ehealthlab.evaluation.compute import AREA_LABELS, SNAI_LABELS, GroupResult
from ehealthlab.evaluation.dataset import Dataset
from ehealthlab.evaluation.registry import BY_ID, INDICATORS
from ehealthlab.evaluation.report import formatting as fmt
from ehealthlab.evaluation.report.evaluations import Evaluations

HEADLINE = (
    "patients_enrolled", "reach_per_1000", "adherence", "adherent_patients_share",
    "retention_share", "loss_rate", "latency_p95_s", "alerts_per_patient_week",
    "alerts_ack_within_24h_share", "cost_per_patient_month", "travel_km_avoided", "sus_mean",
)  # fmt: skip

#: what each headline figure tells a reader, in one line
MEANINGS = {
    "patients_enrolled": "People followed by telemonitoring at some point in the period.",
    "reach_per_1000": "Participants per 1,000 residents of their municipalities.",
    "adherence": "Share of a patient's days with every planned measurement sent (average patient).",
    "adherent_patients_share": "Patients who sent every planned measurement on at least 80 % "
    "of their days.",
    "retention_share": "Patients still measuring in the last 7 days of the period.",
    "loss_rate": "Readings the devices took that the broadband never delivered.",
    "latency_p95_s": "95 % of readings reached the platform within this time of being taken.",
    "alerts_per_patient_week": "Alerts the care team handles per patient per week: the "
    "nurses' workload.",
    "alerts_ack_within_24h_share": "Alerts a clinician acknowledged within a day.",
    "cost_per_patient_month": "What one month of telemonitoring of one patient costs, all in.",
    "travel_km_avoided": "Road kilometres to the reference pole that patients did not travel.",
    "sus_mean": "How usable people find the service (System Usability Scale; 68 is average).",
}

MUNICIPALITY_COLUMNS = (
    "adherence", "completeness", "retention_share", "loss_rate", "latency_p95_s",
    "late_share", "alerts_per_patient_week", "alerts_ack_within_24h_share",
)  # fmt: skip
RELIABILITY_COLUMNS = (
    "loss_rate", "latency_p50_s", "latency_p95_s", "late_share", "rejected_share",
    "duplicate_share", "clock_corrected_share",
)  # fmt: skip
ALERT_COLUMNS = (
    "alerts", "alerts_per_patient_week", "alert_ack_p50_h", "alerts_ack_within_24h_share",
    "provider_engagement",
)  # fmt: skip
MINI_PILOT_COLUMNS = (
    "patient_days", "adherence", "completeness", "loss_rate", "latency_p95_s",
    "alerts_per_patient_week", "alerts_ack_within_24h_share", "cost_per_patient_month",
)  # fmt: skip
#: never computed per area (counted per start-up only)
NOT_BY_AREA = frozenset({"unparsable_messages"})


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    cells: list[fmt.Cell]
    detail: str | None = None  # a second line under the label
    css: str = ""


@dataclass(frozen=True)
class Table:
    caption: str
    head: list[str]  # the row-label column's header first
    rows: list[Row]
    indicators: Sequence[str] = ()  # whose definitions go with the table
    note: str | None = None
    #: header cells that group columns (text, span), above `head`; empty for none
    groups: list[tuple[str, int]] = field(default_factory=list)
    #: columns of text (aligned left), by position in `head`
    text_columns: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Card:
    indicator: str
    title: str
    text: str
    value: float | None
    interval: str | None
    meaning: str
    css: str = ""


def header(indicator_id: str) -> str:
    indicator = BY_ID[indicator_id]
    unit = fmt.unit_words(indicator_id)
    if indicator.unit in {"1", "EUR", "/wk", "/1000"}:  # a share, money, or a rate's title
        return indicator.title
    return f"{indicator.title} ({unit})"


def group_row(
    ev: Evaluations,
    label: str,
    group: GroupResult,
    columns: Sequence[str],
    *,
    leading: Sequence[fmt.Cell] = (),
    detail: str | None = None,
    css: str = "",
) -> Row:
    """A group's row: `leading` cells (reference data, never the group's numbers), patients,
    then each column's value; a small group's band and one `suppressed` across the rest."""
    if ev.hidden(group):
        cells = [*leading, fmt.Cell(ev.band, css="band"), fmt.suppressed_cell(len(columns))]
        return Row(label, cells, detail, f"{css} suppressed".strip())
    patients = fmt.Cell(fmt.count(group.patients), float(group.patients))
    values = [fmt.cell(c, group.values.get(c)) for c in columns]
    return Row(label, [*leading, patients, *values], detail, css)


def headline(ev: Evaluations) -> list[Card]:
    out = []
    hidden = ev.hidden(ev.all)
    for indicator_id in HEADLINE:
        title = BY_ID[indicator_id].title
        meaning = MEANINGS[indicator_id]
        if hidden and indicator_id != "patients_enrolled":
            out.append(Card(indicator_id, title, fmt.SUPPRESSED, None, None, meaning, "supp"))
            continue
        if hidden:
            out.append(Card(indicator_id, title, ev.band, None, None, meaning, "band"))
            continue
        value = ev.all.values.get(indicator_id)
        c = fmt.cell(indicator_id, value)
        number = fmt.plain(value)
        text = c.text if number is None else fmt.with_unit(indicator_id, number)
        out.append(Card(indicator_id, title, text, c.value, c.interval, meaning, c.css))
    return out


def municipalities(ev: Evaluations, data: Dataset) -> Table:
    by_code = {m.istat_code: m for m in data.municipalities}
    ordered = sorted(
        ev.municipality.groups.values(),
        key=lambda g: (by_code[g.key].snai_class if g.key in by_code else "?", g.label),
    )
    rows = []
    for group in ordered:
        snai = by_code[group.key].snai_class if group.key in by_code else "?"
        leading = [fmt.Cell(snai, note=SNAI_LABELS.get(snai))]
        rows.append(group_row(ev, group.label, group, MUNICIPALITY_COLUMNS, leading=leading,
                              detail=f"ISTAT {group.key}"))  # fmt: skip
    rows.append(group_row(ev, "All municipalities", ev.all, MUNICIPALITY_COLUMNS,
                          leading=[fmt.Cell("A–F")], css="total"))  # fmt: skip
    return Table(
        "Indicators per municipality (patients placed by their last enrolled day)",
        ["Municipality", "SNAI class", "Patients", *map(header, MUNICIPALITY_COLUMNS)],
        rows,
        ("patients_enrolled", *MUNICIPALITY_COLUMNS),
        note=f"Municipalities without patients in the period are not listed. {_band_note(ev)}",
    )


def _band_note(ev: Evaluations) -> str:
    return (
        f"A group of fewer than {ev.min_group_patients} patients shows only “{ev.band}”; "
        "its data still count in every larger group."
    )


def areas(ev: Evaluations) -> tuple[GroupResult | None, GroupResult | None]:
    """(inner areas, centres), None for an area without patients."""
    return ev.area.groups.get("inner"), ev.area.groups.get("centre")


def comparison(ev: Evaluations, seed: int) -> Table:
    """Every indicator in inner areas and centres, the difference inner − centre and its 95%
    interval; nothing of it when either area is too small to publish."""
    inner, centre = areas(ev)
    head = ["Indicator", "Centres (SNAI A–C)", "Inner areas (SNAI D–F)",
            "Difference (inner − centres)", "95% interval of the difference",
            "Reading"]  # fmt: skip
    caption = "Inner areas against centres, each difference with its 95% interval"
    ids = [i.id for i in INDICATORS if i.id not in NOT_BY_AREA]
    if inner is None or centre is None or ev.hidden(inner) or ev.hidden(centre):
        missing = [AREA_LABELS[k] for k, g in (("centre", centre), ("inner", inner))
                   if g is None or ev.hidden(g)]  # fmt: skip
        note = (
            f"Not published: {' and '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} fewer than {ev.min_group_patients} "
            "patients, and a difference would reveal their figures."
        )
        return Table(caption, head, [], ids, note)
    rows = []
    for indicator_id in ids:
        d = difference(inner, centre, indicator_id, seed)
        rows.append(Row(BY_ID[indicator_id].title, [
            fmt.cell(indicator_id, centre.values.get(indicator_id)),
            fmt.cell(indicator_id, inner.values.get(indicator_id)),
            fmt.difference(indicator_id, d.difference),
            fmt.difference_interval(indicator_id, d.ci95),
            fmt.Cell(reading(indicator_id, d.ci95), css="text"),
        ], detail=fmt.unit_words(indicator_id)))  # fmt: skip
    note = (
        "Intervals: 2,000 seeded bootstrap resamples of patients within each area (means "
        "resampled directly, ratios recomputed as Σ numerator ÷ Σ denominator). Percentiles, "
        "counts, reach and the economic model have no interval. A difference whose interval "
        "excludes 0 is called clear; pp = percentage points."
    )
    return Table(caption, head, rows, ids, note, text_columns=frozenset({5}))


def reading(indicator_id: str, ci95: tuple[float, float] | None) -> str:
    """What the interval says: a clear difference (and whether it is better), or none."""
    if ci95 is None:
        return ""
    low, high = ci95
    if low <= 0 <= high:
        return "no clear difference"
    higher = low > 0
    better = BY_ID[indicator_id].higher_is_better
    verdict = "" if better is None else (" (better)" if better == higher else " (worse)")
    return f"clearly {'higher' if higher else 'lower'} in inner areas{verdict}"


def _class_rows(
    ev: Evaluations, columns: Sequence[str], *, with_areas: bool = False
) -> Iterable[Row]:
    yield group_row(ev, "All municipalities", ev.all, columns, css="total")
    if with_areas:
        for key in ("centre", "inner"):
            if key in ev.area.groups:
                yield group_row(ev, AREA_LABELS[key], ev.area.groups[key], columns, css="area")
    for key, group in ev.snai_class.groups.items():
        yield group_row(ev, SNAI_LABELS.get(key, key), group, columns)


def reliability(ev: Evaluations) -> Table:
    return Table(
        "Technical reliability over the broadband the devices actually had, per SNAI class",
        ["Group", "Patients", *map(header, RELIABILITY_COLUMNS)],
        list(_class_rows(ev, RELIABILITY_COLUMNS)),
        ("patients_enrolled", *RELIABILITY_COLUMNS),
        note=f"Classes without patients in the period are not listed. {_band_note(ev)}",
    )


def alert_burden(ev: Evaluations) -> Table:
    return Table(
        "Alert burden and provider response, per area and SNAI class",
        ["Group", "Patients", *map(header, ALERT_COLUMNS)],
        list(_class_rows(ev, ALERT_COLUMNS, with_areas=True)),
        ("patients_enrolled", *ALERT_COLUMNS),
        note=_band_note(ev),
    )


def mini_pilots(ev: Evaluations, data: Dataset) -> Table:
    rows = []
    for pilot in data.mini_pilots:
        group = ev.mini_pilot.groups.get(pilot.key)
        if group is None:
            continue
        start = data.period.start.toordinal()
        first, last = (type(data.period.start).fromordinal(start + d)
                       for d in (pilot.first_day, pilot.last_day))  # fmt: skip
        places = len(pilot.municipalities)
        detail = (
            f"{first:%d %b %Y} – {last:%d %b %Y}; {len(pilot.startups)} start-up(s), "
            f"{places} municipalit{'y' if places == 1 else 'ies'}"
        )
        rows.append(group_row(ev, pilot.name, group, MINI_PILOT_COLUMNS, detail=detail))
    return Table(
        "Mini-pilots (their enrolled days only: range, start-ups and municipalities)",
        ["Mini-pilot", "Patients", *map(header, MINI_PILOT_COLUMNS)],
        rows,
        ("patients_enrolled", *MINI_PILOT_COLUMNS),
        note=(
            "No mini-pilot is defined."
            if not rows
            else f"A patient may count in several mini-pilots. {_band_note(ev)}"
        ),
    )


def appendix(ev: Evaluations) -> Table:
    """Every indicator of all patients, with its unit and definition in full."""
    hidden = ev.hidden(ev.all)
    rows = []
    for indicator in INDICATORS:
        if hidden:
            value = fmt.Cell(ev.band if indicator.id == "patients_enrolled" else fmt.SUPPRESSED)
        else:
            value = fmt.cell(indicator.id, ev.all.values.get(indicator.id))
        rows.append(Row(indicator.title, [value, fmt.Cell(fmt.unit_words(indicator.id), css="text"),
                                          fmt.Cell(indicator.definition, css="text")],
                        detail=indicator.id))  # fmt: skip
    return Table("Every indicator, all patients", ["Indicator", "Value", "Unit", "Definition"],
                 rows, note=_band_note(ev), text_columns=frozenset({2, 3}))  # fmt: skip
