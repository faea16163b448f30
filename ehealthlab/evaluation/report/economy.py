"""The economics section: the six economic indicators for all patients and per area, the
parameters they were computed with (and where each comes from), and the scale-up projection
per SNAI class with its formula and inputs. Pure (reads only the shipped reference data and
parameter file)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType

from ehealthlab.evaluation import economics
from ehealthlab.evaluation import scale_up as scale_up_model
from ehealthlab.evaluation.compute import AREA_LABELS, SNAI_LABELS
from ehealthlab.evaluation.economic_parameters import PARAMETERS_TOML, EconomicParameters
from ehealthlab.evaluation.economics import INDICATOR_IDS
from ehealthlab.evaluation.registry import BY_ID
from ehealthlab.evaluation.report import formatting as fmt
from ehealthlab.evaluation.report.evaluations import Evaluations
from ehealthlab.evaluation.report.tables import Row, Table, areas
from ehealthlab.evaluation.scale_up import (
    ClassObservation,
    ScaleUpProjection,
    scale_up_projection,
)
from ehealthlab.evaluation.snai_reference import SNAI_CLASSES, pole_distances

PARAMETER_MEANINGS = {
    "visits_per_month": "In-person monitoring visits replaced, per patient-month",
    "road_factor": "Road km per straight-line km between municipality and pole",
    "co2_kg_per_km": "kg of CO₂ per km driven (private car)",
    "amortisation_months": "Months over which a device's price is spread",
    "connectivity_eur_per_patient_month": "Connectivity, € per patient-month",
    "staff_minutes_per_alert": "Clinical staff minutes one alert takes",
    "staff_eur_per_hour": "Cost of one hour of that staff time, €",
    "platform_eur_per_month": "Platform running cost per month, € (the fixed cost)",
    "visit_tariff_eur": "Tariff of one in-person visit avoided, €",
    "public_travel_eur_per_km": "Travel cost per road km borne by the public purse, €",
}


def economic_table(ev: Evaluations) -> Table:
    """The six economic indicators (and the patients behind them): all, centres, inner."""
    inner, centre = areas(ev)
    columns = [("All municipalities", ev.all), (AREA_LABELS["centre"], centre),
               (AREA_LABELS["inner"], inner)]  # fmt: skip
    rows = []
    for indicator_id in ("patients_enrolled", "patient_days", *INDICATOR_IDS):
        cells = []
        for _, group in columns:
            if group is None:
                cells.append(fmt.Cell(fmt.NO_DATA, note="no patients", css="nodata"))
            elif ev.hidden(group):
                cells.append(fmt.Cell(ev.band, css="band") if indicator_id == "patients_enrolled"
                             else fmt.suppressed_cell())  # fmt: skip
            else:
                cells.append(fmt.cell(indicator_id, group.values.get(indicator_id)))
        rows.append(Row(BY_ID[indicator_id].title, cells, detail=fmt.unit_words(indicator_id)))
    return Table(
        "Economic indicators over the period",
        ["Indicator", *(name for name, _ in columns)],
        rows,
        ("patients_enrolled", "patient_days", *INDICATOR_IDS),
        note="Each area carries its share of the platform's running cost (its share of the "
        "patient-months), so the areas' costs add up to the total.",
    )


def provenance(text: str) -> dict[str, str]:
    """SPEC or ASSUMPTION per parameter, from the comments of the shipped economics.toml
    (a table's keys take the mark above the table)."""
    out: dict[str, str] = {}
    mark: str | None = None
    table = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            word = stripped.lstrip("# ").split(".")[0].split(",")[0]
            if word in {"SPEC", "ASSUMPTION"}:
                mark = word
        elif stripped.startswith("["):
            table = stripped.strip("[]") + "."
        elif "=" in stripped and mark is not None:
            out[table + stripped.split("=")[0].strip()] = mark
    return out


def parameters_table(params: EconomicParameters, source: Path | None) -> Table:
    if source is None:
        shipped = resources.files("ehealthlab.evaluation") / PARAMETERS_TOML
        marks = provenance(shipped.read_text(encoding="utf-8"))
        origin = "the shipped defaults (ehealthlab/evaluation/economics.toml)"
    else:
        marks = {}
        origin = str(source)
    rows = []
    values = params.model_dump()
    for name, meaning in PARAMETER_MEANINGS.items():
        rows.append(_parameter_row(name, values[name], meaning, marks.get(name, "")))
    for kind, price in sorted(params.device_price_eur.items()):
        rows.append(_parameter_row(f"device_price_eur.{kind}", price,
                                   f"Price of one {kind.replace('_', ' ')}, €",
                                   marks.get(f"device_price_eur.{kind}", "")))  # fmt: skip
    note = f"Parameters from {origin}."
    if any(mark == "ASSUMPTION" for mark in marks.values()):
        note += (
            " ASSUMPTION marks an order of magnitude chosen by the developers from no verified "
            "source: replace it with CMTo's and the ASL's own figures before publishing costs."
        )
    head = ["Parameter", "Value", "Meaning", "Source"]
    return Table("Parameters of the economic model", head, rows, note=note,
                 text_columns=frozenset({2, 3}))  # fmt: skip


def _parameter_row(name: str, value: float, meaning: str, mark: str) -> Row:
    cells = [fmt.Cell(f"{value:,.10g}", float(value)), fmt.Cell(meaning, css="text")]
    css = "text assumption" if mark == "ASSUMPTION" else "text"
    return Row(name, [*cells, fmt.Cell(mark or "this file", css=css)])


def docstring_part(module: ModuleType, start: str, stop: str | None = None) -> str:
    """A part of the economic model's documentation (economics.py, scale_up.py), from the
    paragraph that begins with `start` to the one that begins with `stop`: the formulas shown
    are the code's own."""
    text = inspect.cleandoc(module.__doc__ or "")
    begin = text.index(start)
    end = text.index(stop, begin) if stop else len(text)
    return text[begin:end].strip()


def economic_formulas() -> str:
    return docstring_part(economics, "Per group", "An indicator with an empty denominator")


def scale_up_formula() -> str:
    return docstring_part(scale_up_model, "Scale-up projection")


@dataclass(frozen=True)
class ScaleUp:
    table: Table
    projections: list[ScaleUpProjection]


def observations(ev: Evaluations) -> tuple[dict[str, ClassObservation], dict[str, str]]:
    """What each published SNAI class observed; the reason a class is left out otherwise."""
    observed: dict[str, ClassObservation] = {}
    withheld: dict[str, str] = {}
    for key, group in ev.snai_class.groups.items():
        if ev.hidden(group):
            withheld[key] = (
                f"fewer than {ev.min_group_patients} patients observed: suppressed, not projected"
            )
            continue
        observed[key] = ClassObservation(
            fmt.plain(group.values.get("reach_per_1000")),
            fmt.plain(group.values.get("adherence")),
            fmt.plain(group.values.get("cost_per_patient_month")),
        )
    return observed, withheld


_Figure = Callable[[ScaleUpProjection], float | None]
_PROJECTED: list[tuple[str, _Figure, int]] = [
    ("Patients (projected)", lambda p: p.patients, 0),
    ("Patient-months per year", lambda p: p.patient_months_per_year, 0),
    ("Visits avoided per year", lambda p: p.visits_avoided_per_year, 0),
    ("Road km avoided per year", lambda p: p.travel_km_avoided_per_year, 0),
    ("Travel hours avoided per year", lambda p: p.travel_hours_avoided_per_year, 0),
    ("CO₂ avoided per year (kg)", lambda p: p.co2_kg_avoided_per_year, 0),
    ("Cost per year (€)", lambda p: p.cost_eur_per_year, 0),
    ("Avoided public cost per year (€)", lambda p: p.avoided_eur_per_year, 0),
]


def scale_up(ev: Evaluations, params: EconomicParameters) -> ScaleUp:
    observed, withheld = observations(ev)
    projections = scale_up_projection(params, pole_distances(), observed)
    head = ["Per SNAI class", *(f"{p.snai_class}" for p in projections), "Projected classes"]
    done = [p for p in projections if p.projected]
    rows = [
        Row("Municipalities in the class", [*(fmt.Cell(fmt.count(p.municipalities),
            float(p.municipalities)) for p in projections), _total(done, lambda p: float(
            p.municipalities))], detail="reference data"),
        Row("Residents (P)", [*(fmt.Cell(fmt.count(p.population), float(p.population))
            for p in projections), _total(done, lambda p: float(p.population))],
            detail="reference data"),
        _observed_row("Reach observed (r)", "reach_per_1000", projections,
                      lambda p: p.reach_per_1000),
        _observed_row("Adherence observed (a)", "adherence", projections, lambda p: p.adherence),
        _observed_row("Cost per patient-month observed (c)", "cost_per_patient_month",
                      projections, lambda p: p.cost_per_patient_month),
    ]  # fmt: skip
    for label, figure, decimals in _PROJECTED:
        cells = [_amount(figure(p), decimals) if p.projected else
                 fmt.Cell(fmt.NO_DATA, css="nodata") for p in projections]  # fmt: skip
        rows.append(Row(label, [*cells, _total(done, figure)], css="projected"))
    why = {p.snai_class: withheld.get(p.snai_class, p.reason or "")
           for p in projections if not p.projected}  # fmt: skip
    rows.append(Row("Projected", [fmt.Cell("yes" if p.projected else "no", css="nodata"
                                           if not p.projected else "") for p in projections]
                    + [fmt.Cell(f"{len(done)} of {len(projections)}")]))  # fmt: skip
    classes = ", ".join(f"{k}: {SNAI_LABELS[k].split(', ')[1]}" for k in SNAI_CLASSES)
    reasons = " ".join(f"Class {k} not projected: {text}." for k, text in why.items())
    table = Table(
        "Scale-up projection: the service extended to every municipality of each SNAI class, "
        "per year",
        head,
        rows,
        ("reach_per_1000", "adherence", "cost_per_patient_month"),
        note=f"Classes {classes}. The last column adds up the projected classes only. {reasons}",
        groups=[("", 1), ("SNAI class", len(projections)), ("", 1)],
    )
    return ScaleUp(table, projections)


def _observed_row(
    label: str, indicator_id: str, projections: list[ScaleUpProjection], figure: _Figure
) -> Row:
    cells = []
    for p in projections:
        value = figure(p)
        cells.append(fmt.cell(indicator_id, value) if value is not None
                     else fmt.Cell(fmt.NO_DATA, css="nodata"))  # fmt: skip
    return Row(label, [*cells, fmt.Cell("")], detail="input")


def _amount(value: float | None, decimals: int) -> fmt.Cell:
    if value is None:
        return fmt.Cell(fmt.NO_DATA, css="nodata")
    return fmt.Cell(fmt.amount(value, decimals), value)


def _total(done: list[ScaleUpProjection], figure: _Figure) -> fmt.Cell:
    values = [figure(p) for p in done]
    if not done or any(v is None for v in values):
        return fmt.Cell(fmt.NO_DATA, css="nodata")
    return _amount(sum(v for v in values if v is not None), 0)
