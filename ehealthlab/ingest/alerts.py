"""Clinical alert rules (indicators.md, "Clinical safety"). Pure.

Threshold rules compare one accepted reading with a limit; `weight_gain` compares a weight
with the patient's lowest accepted weight in the preceding 72 hours. At most one alert per
patient, rule and pilot day (Europe/Rome day of the clock-corrected measurement time): the
first breaching reading to arrive raises it, and its receive time is the alert's raised time,
from which the provider's response is measured.
"""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID
from zoneinfo import ZoneInfo

from ehealthlab.errors import ConfigurationError

PILOT_ZONE = ZoneInfo("Europe/Rome")

_OPERATORS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """`metric` `op` `threshold`, e.g. bp_systolic >= 180 (canonical units)."""

    rule_id: str
    metric: str
    op: str
    threshold: float

    def breached_by(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.threshold)


@dataclass(frozen=True, slots=True)
class WeightGainRule:
    """A weight at least `gain_kg` above the lowest accepted weight of the preceding window."""

    rule_id: str = "weight_gain"
    metric: str = "body_weight"
    gain_kg: float = 2.0
    window: timedelta = timedelta(hours=72)


@dataclass(frozen=True)
class AlertRules:
    thresholds: tuple[ThresholdRule, ...]
    weight_gain: WeightGainRule

    @property
    def ids(self) -> list[str]:
        return [r.rule_id for r in self.thresholds] + [self.weight_gain.rule_id]


DEFAULT_RULES = AlertRules(
    thresholds=(
        ThresholdRule("bp_systolic_high", "bp_systolic", ">=", 180),
        ThresholdRule("bp_systolic_low", "bp_systolic", "<=", 90),
        ThresholdRule("bp_diastolic_high", "bp_diastolic", ">=", 110),
        ThresholdRule("heart_rate_high", "heart_rate", ">=", 120),
        ThresholdRule("heart_rate_low", "heart_rate", "<=", 40),
        ThresholdRule("spo2_low", "spo2", "<=", 90),
        ThresholdRule("fever", "body_temperature", ">=", 38.0),
        ThresholdRule("glucose_low", "blood_glucose", "<=", 70),
        ThresholdRule("glucose_high", "blood_glucose", ">=", 300),
    ),
    weight_gain=WeightGainRule(),
)


class AttributedReading(Protocol):
    """An accepted reading of a patient, as the rules see it (the store's AttributedRow)."""

    @property
    def patient_id(self) -> UUID: ...
    @property
    def device_id(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def value(self) -> float: ...
    @property
    def measured_at(self) -> datetime: ...
    @property
    def received_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class AlertCandidate:
    """An alert to raise unless one already exists for (patient, rule, day)."""

    patient_id: UUID
    rule_id: str
    day: date
    reading: AttributedReading

    @property
    def key(self) -> tuple[UUID, str, date]:
        return (self.patient_id, self.rule_id, self.day)


def pilot_day(moment: datetime) -> date:
    return moment.astimezone(PILOT_ZONE).date()


def alert_candidates(
    readings: Iterable[AttributedReading],
    weight_history: Mapping[UUID, Sequence[tuple[datetime, float]]],
    rules: AlertRules = DEFAULT_RULES,
) -> list[AlertCandidate]:
    """The alerts these new readings raise, one per (patient, rule, day), first arrival first.

    `weight_history` holds, per patient, accepted weights (measured_at, kg) around the new
    ones — stored earlier or in this batch — from which the 72-hour minimum is taken.
    """
    by_metric: dict[str, list[ThresholdRule]] = {}
    for rule in rules.thresholds:
        by_metric.setdefault(rule.metric, []).append(rule)
    found: dict[tuple[UUID, str, date], AlertCandidate] = {}
    ordered = sorted(readings, key=lambda r: (r.received_at, r.measured_at))
    for reading in ordered:
        breached = [
            r.rule_id for r in by_metric.get(reading.metric, ()) if r.breached_by(reading.value)
        ]
        if reading.metric == rules.weight_gain.metric and _gained_weight(
            reading, weight_history.get(reading.patient_id, ()), rules.weight_gain
        ):
            breached.append(rules.weight_gain.rule_id)
        for rule_id in breached:
            candidate = AlertCandidate(
                reading.patient_id, rule_id, pilot_day(reading.measured_at), reading
            )
            found.setdefault(candidate.key, candidate)
    return list(found.values())


def _gained_weight(
    reading: AttributedReading, history: Sequence[tuple[datetime, float]], rule: WeightGainRule
) -> bool:
    start = reading.measured_at - rule.window
    earlier = [kg for when, kg in history if start <= when < reading.measured_at]
    return bool(earlier) and reading.value - min(earlier) >= rule.gain_kg - 1e-9


def load_rules(path: Path) -> AlertRules:
    """Rules from a TOML file: `[thresholds.<rule_id>] metric, op, threshold` tables and an
    optional `[weight_gain] gain_kg, window_hours`; rules not named keep their defaults."""
    try:
        document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"alert rules {path}: {exc}") from None
    thresholds = {r.rule_id: r for r in DEFAULT_RULES.thresholds}
    for rule_id, spec in document.get("thresholds", {}).items():
        try:
            rule = ThresholdRule(
                rule_id, str(spec["metric"]), str(spec["op"]), float(spec["threshold"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"alert rules {path}: rule {rule_id!r}: {exc}") from None
        if rule.op not in _OPERATORS:
            raise ConfigurationError(f"alert rules {path}: rule {rule_id!r}: op must be >= or <=")
        thresholds[rule_id] = rule
    weight = document.get("weight_gain", {})
    weight_rule = WeightGainRule(
        gain_kg=float(weight.get("gain_kg", DEFAULT_RULES.weight_gain.gain_kg)),
        window=timedelta(hours=float(weight.get("window_hours", 72))),
    )
    return AlertRules(tuple(thresholds.values()), weight_rule)
