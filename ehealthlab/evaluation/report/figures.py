"""The report's figures: matplotlib drawn off-screen (no pyplot, no display) and returned as
inline SVG text, so the HTML file carries them without any other file. Each function takes
plain numbers (the groups already filtered for publication) and returns the `<svg>` element
with its alt text; a figure of simulated data says so on its face. Pure."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Okabe-Ito colours (readable with every common colour-vision deficiency, and in grey)
COLOURS = {"all": "#333333", "centre": "#0072B2", "inner": "#D55E00", "cost": "#999999",
           "avoided": "#009E73"}  # fmt: skip
_STYLE: Any = {  # rcParams (matplotlib types the keys as literals)
    "svg.fonttype": "none",  # text stays text: small, selectable, read by screen readers
    "svg.hashsalt": "ehealthlab-report",  # the same figure gives the same SVG
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # shipped with matplotlib: the same text widths anywhere
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
}


@dataclass(frozen=True, slots=True)
class Point:
    """A value with its optional interval; None value: not shown (no data or suppressed)."""

    value: float | None
    low: float | None = None
    high: float | None = None


def render(figure: Figure, alt: str, *, key: str, simulated: bool) -> str:
    """The figure as an inline `<svg>`, its ids prefixed with `key` so that they cannot clash
    with another figure's in the same page."""
    if simulated:
        figure.text(0.995, 0.995, "SIMULATED DATA", ha="right", va="top", fontsize=8,
                    color="#b00020", fontweight="bold")  # fmt: skip
    buffer = io.StringIO()
    with mpl.rc_context(_STYLE):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    prefix = f"{key}-"
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', text)
    label = escape(alt, quote=True)
    return text.replace("<svg ", f'<svg role="img" aria-label="{label}" ', 1).strip()


def _figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list[Axes]]:
    with mpl.rc_context(_STYLE):
        figure = Figure(figsize=(width, height), layout="constrained")
        axes = [figure.add_subplot(1, columns, i + 1) for i in range(columns)]
    return figure, axes


def _percent(axis: Axes, *, limit_to_one: bool = True) -> None:
    axis.yaxis.set_major_formatter(lambda v, _: f"{v * 100:.0f} %")
    if limit_to_one:
        axis.set_ylim(0, 1.05)


def adherence_over_time(
    labels: Sequence[str], series: dict[str, tuple[str, list[Point]]], *, key: str, simulated: bool
) -> str:
    """One line per group (key -> (label, points)), with the interval shaded; a point of a
    group too small that step is left out (the line breaks)."""
    with mpl.rc_context(_STYLE):
        figure, (axis,) = _figure(8, 3.2)
        x = list(range(len(labels)))
        for group, (label, points) in series.items():
            colour = COLOURS.get(group, "#333333")
            values = [p.value if p.value is not None else float("nan") for p in points]
            axis.plot(x, values, marker="o", markersize=4, color=colour, label=label,
                      linewidth=2.2 if group == "all" else 1.6)  # fmt: skip
            low = [p.low if p.low is not None else float("nan") for p in points]
            high = [p.high if p.high is not None else float("nan") for p in points]
            axis.fill_between(x, low, high, color=colour, alpha=0.12, linewidth=0)
        axis.set_xticks(x, labels, rotation=0 if len(labels) <= 12 else 45)
        axis.set_xlabel("Step starting on")
        axis.set_ylabel("Adherence (mean over patients)")
        _percent(axis)
        axis.legend(loc="lower left", ncols=3)
    alt = "Line chart of mean adherence per step for " + ", ".join(
        label for label, _ in series.values()
    )
    return render(figure, alt, key=key, simulated=simulated)


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    values: list[float | None]
    text: Callable[[float], str]
    share: bool = False


def per_group_bars(
    groups: Sequence[str],
    notes: Sequence[str],
    panels: Sequence[Panel],
    *,
    alt: str,
    key: str,
    simulated: bool,
    colours: Sequence[str] | None = None,
) -> str:
    """Side-by-side bar panels over the same groups; each bar labelled with its value, each
    group with its note (patients, or why there is no bar)."""
    with mpl.rc_context(_STYLE):
        figure, axes = _figure(8, 3.2, len(panels))
        x = list(range(len(groups)))
        ticks = [f"{g}\n{n}" for g, n in zip(groups, notes, strict=True)]
        for axis, panel in zip(axes, panels, strict=True):
            heights = [v if v is not None else 0.0 for v in panel.values]
            bars = axis.bar(x, heights, color=colours or COLOURS["all"], width=0.6)
            top = max((v for v in panel.values if v is not None), default=0.0)
            top = top if top > 0 else 1.0
            axis.set_ylim(0, top * 1.22)
            for bar, value in zip(bars, panel.values, strict=True):
                label = panel.text(value) if value is not None else "–"
                axis.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                              xytext=(0, 2), textcoords="offset points", ha="center",
                              va="bottom", fontsize=8)  # fmt: skip
            axis.set_xticks(x, ticks, fontsize=8)
            axis.set_title(panel.title)
            axis.grid(axis="x", visible=False)
            if panel.share:
                axis.yaxis.set_major_formatter(lambda v, _: f"{v * 100:.1f} %")
    return render(figure, alt, key=key, simulated=simulated)


def adherence_against_loss(
    points: Sequence[tuple[str, float, float, str]], *, key: str, simulated: bool
) -> str:
    """Per municipality (name, adherence, loss rate, area): did the patient not measure, or
    did the broadband not deliver?"""
    with mpl.rc_context(_STYLE):
        figure, (axis,) = _figure(8, 3.0)
        for area, label in (("centre", "Centres (SNAI A–C)"), ("inner", "Inner areas (D–F)")):
            chosen = [p for p in points if p[3] == area]
            if chosen:
                axis.scatter([p[2] for p in chosen], [p[1] for p in chosen], s=28,
                             color=COLOURS[area], label=label, zorder=3)  # fmt: skip
        for name, adherence, loss, _ in points:
            axis.annotate(name, (loss, adherence), xytext=(4, 3), textcoords="offset points",
                          fontsize=7, color="#444444")  # fmt: skip
        losses = [p[2] for p in points] or [0.0]
        right = max(max(losses) * 1.25, 0.01)
        axis.set_xlim(-right * 0.03, right)  # a point at 0 % stays off the axis
        axis.xaxis.set_major_formatter(lambda v, _: f"{v * 100:.1f} %")
        _percent(axis)
        lowest = min(p[1] for p in points) if points else 0.0
        axis.set_ylim(max(0.0, math.floor(lowest * 10 - 1) / 10), 1.02)
        axis.set_xlabel("Loss rate: readings taken that the network lost")
        axis.set_ylabel("Adherence")
        axis.legend(loc="best")
    alt = (
        "Scatter plot of adherence against loss rate, one point per published municipality: "
        + "; ".join(
            f"{n} adherence {a * 100:.1f} %, loss {lo * 100:.1f} %" for n, a, lo, _ in points
        )
    )
    return render(figure, alt, key=key, simulated=simulated)


def differences(
    rows: Sequence[tuple[str, float, float, float]], *, key: str, simulated: bool
) -> str:
    """Forest plot: per indicator (title, difference, low, high) in percentage points."""
    with mpl.rc_context(_STYLE):
        figure, (axis,) = _figure(8, 0.9 + 0.32 * len(rows))
        y = list(range(len(rows)))[::-1]
        for position, (_, diff, low, high) in zip(y, rows, strict=True):
            clear = low > 0 or high < 0
            colour = COLOURS["inner"] if clear else "#777777"
            axis.plot([low * 100, high * 100], [position, position], color=colour, linewidth=2)
            axis.plot([diff * 100], [position], "o", color=colour, markersize=5)
        axis.axvline(0, color="#333333", linewidth=0.8)
        axis.set_yticks(y, [r[0] for r in rows])
        axis.set_xlabel("Inner areas − centres (percentage points)")
        axis.grid(axis="y", visible=False)
    alt = "Differences between inner areas and centres with 95% intervals: " + "; ".join(
        f"{t} {d * 100:+.1f} pp ({lo * 100:+.1f} to {hi * 100:+.1f})" for t, d, lo, hi in rows
    )
    return render(figure, alt, key=key, simulated=simulated)


def cost_against_avoided(
    classes: Sequence[str],
    cost: Sequence[float],
    avoided: Sequence[float],
    *,
    key: str,
    simulated: bool,
) -> str:
    """Per projected SNAI class, the yearly cost beside the yearly avoided public cost."""
    with mpl.rc_context(_STYLE):
        figure, (axis,) = _figure(8, 3.0)
        x = list(range(len(classes)))
        width = 0.38
        axis.bar([i - width / 2 for i in x], cost, width, color=COLOURS["cost"],
                 label="Cost per year")  # fmt: skip
        axis.bar([i + width / 2 for i in x], avoided, width, color=COLOURS["avoided"],
                 label="Avoided public cost per year")  # fmt: skip
        axis.set_xticks(x, [f"SNAI {c}" for c in classes])
        axis.yaxis.set_major_formatter(lambda v, _: f"€ {v:,.0f}")
        axis.grid(axis="x", visible=False)
        axis.legend(loc="upper left")
    alt = "Bar chart of projected yearly cost and avoided public cost per SNAI class: " + (
        "; ".join(
            f"{c} cost € {a:,.0f}, avoided € {b:,.0f}"
            for c, a, b in zip(classes, cost, avoided, strict=True)
        )
    )
    return render(figure, alt, key=key, simulated=simulated)
