"""What an alert-threshold replay replays: the rules file, each rule with one or more
settings beside the rules in force (docs/replay-alerts.md). Pure but for reading the file."""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.errors import ConfigurationError
from ehealthlab.ingest.alerts import AlertRules, ThresholdRule, WeightGainRule

OPERATORS = (">=", "<=")
Rule = ThresholdRule | WeightGainRule


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting of one rule; `current` when it is the rules' in force."""

    rule: Rule
    current: bool

    @property
    def rule_id(self) -> str:
        return self.rule.rule_id

    @property
    def label(self) -> str:
        rule = self.rule
        if isinstance(rule, WeightGainRule):
            hours = rule.window / timedelta(hours=1)
            return f"+{_number(rule.gain_kg)} kg in {_number(hours)} h"
        return f"{rule.op} {_number(rule.threshold)}"

    def parameters(self) -> dict[str, object]:
        rule = self.rule
        if isinstance(rule, WeightGainRule):
            return {
                "metric": rule.metric,
                "gain_kg": rule.gain_kg,
                "window_hours": rule.window / timedelta(hours=1),
            }
        return {"metric": rule.metric, "op": rule.op, "threshold": rule.threshold}


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class ReplayPlan:
    """The settings to replay, rule by rule (the current rules' order, then rules new in the
    file), each rule's settings in order of strictness; the current rules' own settings are
    always among them."""

    settings: tuple[Setting, ...]
    current: AlertRules

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.rule.metric for s in self.settings))

    @property
    def weight_metric(self) -> str:
        return self.current.weight_gain.metric

    @property
    def longest_window(self) -> timedelta:
        windows = [s.rule.window for s in self.settings if isinstance(s.rule, WeightGainRule)]
        return max(windows, default=timedelta(0))


def plan_of(current: AlertRules) -> ReplayPlan:
    """Only the current rules (a replay without a rules file)."""
    return build_plan({}, current, source="(none)")


def load_plan(path: Path, current: AlertRules) -> ReplayPlan:
    """The settings a rules file asks for (see `build_plan`), or ConfigurationError: one line
    naming the file and what is wrong."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"alert rules {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"alert rules {path}: not TOML: {exc}") from None
    return build_plan(document, current, source=str(path))


_THRESHOLD_KEYS = ("metric", "op", "threshold")
_WEIGHT_KEYS = ("gain_kg", "window_hours")


def build_plan(document: Mapping[str, Any], current: AlertRules, *, source: str) -> ReplayPlan:
    """The settings of a rules document: ingest's rules file format, where any number may be a
    list of numbers to compare.

    `[thresholds.<rule_id>]` takes `metric`, `op` (`>=` or `<=`) and `threshold` (a number or
    a list); for a current rule `metric` and `op` may be left out (they are the current
    rule's, and may not differ). `[weight_gain]` takes `gain_kg` and `window_hours`, each a
    number or a list; every combination is replayed, a key left out keeps the current value.
    """
    complain = _Complaint(source)
    unknown = sorted(set(document) - {"thresholds", "weight_gain"})
    if unknown:
        raise complain(
            unknown[0], "unknown table (a rules file has [thresholds.<rule_id>] and [weight_gain])"
        )
    wanted = _threshold_variants(document.get("thresholds", {}), current, complain)
    settings: list[Setting] = []
    for rule in current.thresholds:
        variants = {r.threshold: r for r in wanted.pop(rule.rule_id, [])}
        variants[rule.threshold] = rule
        settings.extend(
            Setting(r, current=r.threshold == rule.threshold) for r in _strictness(variants)
        )
    for rules in wanted.values():  # rules new in the file
        settings.extend(
            Setting(r, current=False) for r in _strictness({r.threshold: r for r in rules})
        )
    settings.extend(_weight_settings(document.get("weight_gain", {}), current, complain))
    return ReplayPlan(tuple(settings), current)


def _strictness(variants: Mapping[float, ThresholdRule]) -> list[ThresholdRule]:
    """From the setting that alerts most to the one that alerts least."""
    ordered = [variants[t] for t in sorted(variants)]
    return ordered if ordered[0].op == ">=" else ordered[::-1]


class _Complaint:
    """One line naming the file, the place in it and what is wrong there."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, where: str, what: str) -> ConfigurationError:
        return ConfigurationError(f"alert rules {self.source}: {where}: {what}")


def _threshold_variants(
    tables: object, current: AlertRules, complain: _Complaint
) -> dict[str, list[ThresholdRule]]:
    if not isinstance(tables, dict):
        raise complain("thresholds", "must be tables [thresholds.<rule_id>]")
    known_rules = {r.rule_id: r for r in current.thresholds}
    wanted: dict[str, list[ThresholdRule]] = {}
    for rule_id, spec in tables.items():
        where = f"thresholds.{rule_id}"
        if not isinstance(spec, dict):
            raise complain(where, "must be a table with metric, op and threshold")
        if rule_id == current.weight_gain.rule_id:
            raise complain(where, f"{rule_id} is set in [weight_gain]")
        extra = sorted(set(spec) - set(_THRESHOLD_KEYS))
        if extra:
            raise complain(f"{where}.{extra[0]}", "unknown key (expected metric, op, threshold)")
        known = known_rules.get(rule_id)
        metric = spec.get("metric", known.metric if known else None)
        op = spec.get("op", known.op if known else None)
        if metric is None or op is None:
            missing = "metric" if metric is None else "op"
            raise complain(where, f"{missing} is missing (needed for a rule not among the current)")
        if metric not in METRICS:
            raise complain(f"{where}.metric", f"unknown metric {metric!r}")
        if op not in OPERATORS:
            raise complain(f"{where}.op", f"{op!r} is not an operator (>= or <=)")
        if known is not None and (metric, op) != (known.metric, known.op):
            raise complain(
                where,
                f"metric and op must be the current rule's ({known.metric} {known.op}); "
                "give another rule id to replay a different rule",
            )
        if "threshold" not in spec:
            raise complain(where, "threshold is missing (a number or a list of numbers)")
        values = _numbers(spec["threshold"], f"{where}.threshold", complain)
        wanted[rule_id] = [ThresholdRule(rule_id, metric, op, v) for v in values]
    return wanted


def _weight_settings(spec: object, current: AlertRules, complain: _Complaint) -> list[Setting]:
    gain = current.weight_gain
    if not isinstance(spec, dict):
        raise complain("weight_gain", "must be a table with gain_kg and window_hours")
    extra = sorted(set(spec) - set(_WEIGHT_KEYS))
    if extra:
        raise complain(f"weight_gain.{extra[0]}", "unknown key (expected gain_kg, window_hours)")
    current_hours = gain.window / timedelta(hours=1)
    gains = _numbers(spec.get("gain_kg", gain.gain_kg), "weight_gain.gain_kg", complain)
    hours = _numbers(spec.get("window_hours", current_hours), "weight_gain.window_hours", complain)
    for name, values in (("gain_kg", gains), ("window_hours", hours)):
        if min(values) <= 0:
            raise complain(f"weight_gain.{name}", f"{_number(min(values))} is not above 0")
    combinations = set(itertools.product(hours, gains)) | {(current_hours, gain.gain_kg)}
    return [
        Setting(
            WeightGainRule(gain.rule_id, gain.metric, g, timedelta(hours=h)),
            current=(h, g) == (current_hours, gain.gain_kg),
        )
        for h, g in sorted(combinations)
    ]


def _numbers(value: object, where: str, complain: _Complaint) -> list[float]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise complain(where, "an empty list (give a number or a list of numbers)")
    numbers: list[float] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise complain(where, f"{item!r} is not a number (give a number or a list of numbers)")
        if not math.isfinite(item):
            raise complain(where, f"{item!r} is not a finite number")
        if float(item) in numbers:
            raise complain(where, f"{_number(float(item))} is given twice")
        numbers.append(float(item))
    return numbers
