"""How the report writes a number for people: per unit of the registry, with its interval,
and the cell that carries it into the HTML (the exact value rides along as `data-value`, so a
reader or a test can check the page against the JSON). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from ehealthlab.evaluation.registry import BY_ID, Mean, Value

SUPPRESSED = "suppressed"
NO_DATA = "–"
NO_DATA_NOTE = "no data: nothing to count in this group (empty denominator)"

#: the words a reader sees for each registry unit (UCUM)
UNIT_WORDS = {
    "1": "%",
    "s": "s",
    "h": "h",
    "d": "days",
    "km": "km",
    "kg": "kg CO₂",
    "EUR": "€",
    "/1000": "per 1,000 residents",
    "/wk": "per patient-week",
    "{patients}": "patients",
    "{visits}": "visits",
    "{alerts}": "alerts",
    "{messages}": "messages",
    "{score}": "points (0–100)",
    "{responses}": "responses",
}


@dataclass(frozen=True, slots=True)
class Cell:
    """One table cell: what it shows, the exact number behind it (None when it shows none),
    an optional second line (the interval) and a tooltip."""

    text: str
    value: float | None = None
    interval: str | None = None
    note: str | None = None
    css: str = ""
    #: columns the cell spans (a suppressed group's one "suppressed" across its indicators)
    span: int = 1


def suppressed_cell(span: int = 1) -> Cell:
    return Cell(SUPPRESSED, note="too few patients to publish", css="supp", span=span)


def unit_words(indicator_id: str) -> str:
    return UNIT_WORDS.get(BY_ID[indicator_id].unit, BY_ID[indicator_id].unit)


def _decimals(indicator_id: str, value: float) -> int:
    unit = BY_ID[indicator_id].unit
    if unit in {"km", "kg", "d", "{patients}", "{alerts}", "{messages}", "{responses}"}:
        return 0 if float(value).is_integer() or abs(value) >= 10 else 1
    if unit == "s":
        return 0 if abs(value) >= 100 else 1
    if unit in {"EUR", "/1000", "/wk"}:
        return 2
    return 1


def number(indicator_id: str, value: float) -> str:
    """The value alone, as a reader expects it: shares in per cent, money in euros."""
    if BY_ID[indicator_id].unit == "1":
        return f"{value * 100:,.1f} %"
    text = f"{value:,.{_decimals(indicator_id, value)}f}"
    return f"€ {text}" if BY_ID[indicator_id].unit == "EUR" else text


def with_unit(indicator_id: str, value: float) -> str:
    """The value with its unit, for a sentence or a headline card."""
    unit = BY_ID[indicator_id].unit
    if unit in {"1", "EUR"}:
        return number(indicator_id, value)
    text = f"{number(indicator_id, value)} {unit_words(indicator_id)}"
    if unit == "s" and value >= 120:
        text += f" (≈ {value / 60:,.0f} min)"
    return text


def interval(indicator_id: str, ci95: tuple[float, float] | None) -> str | None:
    if ci95 is None:
        return None
    low, high = (number(indicator_id, v) for v in ci95)
    return f"95% CI {low} to {high}"


def plain(value: Value) -> float | None:
    """The number of a value (a mean's point value), None for no value."""
    if isinstance(value, Mean):
        return value.value
    if isinstance(value, int | float):
        return float(value)
    return None


def cell(indicator_id: str, value: Value) -> Cell:
    """A published value: the number, its interval below it for a mean, or 'no data'."""
    number_ = plain(value)
    if number_ is None:
        return Cell(NO_DATA, note=NO_DATA_NOTE, css="nodata")
    ci = interval(indicator_id, value.ci95) if isinstance(value, Mean) else None
    return Cell(number(indicator_id, number_), number_, ci)


def difference(indicator_id: str, value: float | None) -> Cell:
    """A difference between two groups: signed; shares in percentage points."""
    if value is None:
        return Cell(NO_DATA, note=NO_DATA_NOTE, css="nodata")
    if BY_ID[indicator_id].unit == "1":
        return Cell(f"{value * 100:+,.1f} pp", value)
    sign = "+" if value > 0 else ("−" if value < 0 else "±")
    magnitude = number(indicator_id, abs(value))
    return Cell(f"{sign}{magnitude}", value)


def difference_interval(indicator_id: str, ci95: tuple[float, float] | None) -> Cell:
    if ci95 is None:
        return Cell(NO_DATA, note="no interval for this kind of indicator", css="nodata")
    if BY_ID[indicator_id].unit == "1":
        low, high = (f"{v * 100:+,.1f}" for v in ci95)
        return Cell(f"{low} to {high} pp")
    low, high = (difference(indicator_id, v).text for v in ci95)
    return Cell(f"{low} to {high}")


def count(value: float | int) -> str:
    return f"{value:,.0f}"


def amount(value: float, decimals: int = 0) -> str:
    return f"{value:,.{decimals}f}"
