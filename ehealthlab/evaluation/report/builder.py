"""`build_report`: one Dataset (one snapshot of the store) to the pilot report, one
self-contained HTML file for people (issue 10, item 7; docs/report.md).

Everything the page needs is inside it: the CSS, the figures as inline SVG, the definitions
(in `<details>`, so one click away without JavaScript). It loads nothing from anywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.evaluation.dataset import Dataset
from ehealthlab.evaluation.economic_parameters import load_parameters
from ehealthlab.evaluation.registry import BY_ID
from ehealthlab.evaluation.report import charts, economy, tables
from ehealthlab.evaluation.report.evaluations import evaluate_report
from ehealthlab.evaluation.service import economic_model
from ehealthlab.settings import Settings

TEMPLATE = "report.html.j2"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("ehealthlab.evaluation.report", "templates"),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals["indicators"] = BY_ID
    return env


def _svg(text: str | None) -> Markup | None:
    # our own matplotlib output, ids prefixed; nothing in it comes from the data but numbers
    # and labels matplotlib escaped itself
    return Markup(text) if text is not None else None  # noqa: S704


def build_report(data: Dataset, settings: Settings, *, computed_at: datetime | None = None) -> str:
    """The report of one population over one period: every grouping it shows is computed
    here from `data`, with the configured seed, economic parameters and publication
    threshold."""
    seed = settings.evaluation_seed
    params = load_parameters(settings.economics_file)
    ev = evaluate_report(data, seed=seed, economics=economic_model(settings),
                         min_group_patients=settings.min_group_patients)  # fmt: skip
    simulated = data.population == "simulated"
    moment = (computed_at or datetime.now(UTC)).astimezone(PILOT_ZONE)
    scale_up = economy.scale_up(ev, params)
    over_time_svg, over_time_table = charts.over_time(ev, simulated=simulated)
    context: dict[str, Any] = {
        "simulated": simulated,
        "population": data.population,
        "first_day": data.period.start,
        "last_day": data.period.end - timedelta(days=1),
        "period": data.period,
        "computed_at": moment,
        "seed": seed,
        "band": ev.band,
        "min_group_patients": ev.min_group_patients,
        "economics_source": str(settings.economics_file or "shipped defaults"),
        "step_name": "4-week step" if ev.series and ev.series[0][0].last_day >= 7 else "week",
        "cards": tables.headline(ev),
        "headline_ids": tables.HEADLINE,
        "municipalities": tables.municipalities(ev, data),
        "municipalities_svg": _svg(charts.municipalities(ev, data, simulated=simulated)),
        "comparison": tables.comparison(ev, seed),
        "comparison_svg": _svg(charts.comparison(ev, seed, simulated=simulated)),
        "over_time": over_time_table,
        "over_time_svg": _svg(over_time_svg),
        "reliability": tables.reliability(ev),
        "reliability_svg": _svg(charts.broadband(ev, simulated=simulated)),
        "alerts": tables.alert_burden(ev),
        "alerts_svg": _svg(charts.alert_burden(ev, simulated=simulated)),
        "mini_pilots": tables.mini_pilots(ev, data),
        "economics": economy.economic_table(ev),
        "economic_formulas": economy.economic_formulas(),
        "parameters": economy.parameters_table(params, settings.economics_file),
        "scale_up": scale_up.table,
        "scale_up_formula": economy.scale_up_formula(),
        "scale_up_svg": _svg(charts.scale_up(scale_up, simulated=simulated)),
        "appendix": tables.appendix(ev),
    }
    return _environment().get_template(TEMPLATE).render(**context)
