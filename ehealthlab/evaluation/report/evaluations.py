"""The evaluations one report needs, all computed from one Dataset (one snapshot), and what
may be published of each group. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ehealthlab.evaluation.compute import EconomicModel, Evaluation, GroupResult, evaluate
from ehealthlab.evaluation.dataset import Dataset
from ehealthlab.evaluation.output import suppressed

#: up to this many weeks the series over time is weekly; longer periods use 4-week steps
WEEKLY_UP_TO = 26


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the series over time: its days (from the period start, both included)."""

    first_day: int
    last_day: int
    start: date
    end: date  # the last day, included

    @property
    def label(self) -> str:
        return f"{self.start:%d %b}"


def steps(data: Dataset) -> list[Step]:
    """Whole weeks from the period's first day (4-week steps past WEEKLY_UP_TO weeks); the
    last step may be shorter."""
    days = data.period.days
    length = 7 if days <= WEEKLY_UP_TO * 7 else 28
    out = []
    for first in range(0, days, length):
        last = min(first + length, days) - 1
        start = data.period.start + timedelta(days=first)
        out.append(Step(first, last, start, data.period.start + timedelta(days=last)))
    return out


@dataclass(frozen=True)
class Evaluations:
    """Every evaluation of the report. `area.all` carries the headline (with the economic
    model); the series evaluates each step by area."""

    area: Evaluation
    municipality: Evaluation
    snai_class: Evaluation
    mini_pilot: Evaluation
    series: list[tuple[Step, Evaluation]]
    min_group_patients: int

    @property
    def all(self) -> GroupResult:
        return self.area.all

    def hidden(self, group: GroupResult) -> bool:
        """True when the group is too small to publish (indicators.md: only its band)."""
        return suppressed(group.values, self.min_group_patients)

    @property
    def band(self) -> str:
        return f"< {self.min_group_patients}"


def evaluate_report(
    data: Dataset, *, seed: int, economics: EconomicModel, min_group_patients: int
) -> Evaluations:
    """The report's evaluations of one Dataset."""
    series = [
        (step, evaluate(data, "area", seed=seed, window=(step.first_day, step.last_day)))
        for step in steps(data)
    ]
    return Evaluations(
        area=evaluate(data, "area", seed=seed, economics=economics),
        municipality=evaluate(data, "municipality", seed=seed),
        snai_class=evaluate(data, "snai_class", seed=seed, economics=economics),
        mini_pilot=evaluate(data, "mini_pilot", seed=seed, economics=economics),
        series=series,
        min_group_patients=min_group_patients,
    )
