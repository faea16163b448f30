"""Clinical alert rules (indicators.md, "Clinical safety"). Pure.

Threshold rules compare one accepted reading with a limit; `weight_gain` compares a weight
with the patient's lowest accepted weight in the preceding 72 hours. At most one alert per
patient, rule and pilot day (Europe/Rome day of the clock-corrected measurement time): the
first breaching reading to arrive raises it, and its receive time is the alert's raised time,
from which the provider's response is measured.
"""

from __future__ import annotations

import math
import operator
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, overload
from uuid import UUID

import numpy as np
import numpy.typing as npt

from ehealthlab.contract.pilot_time import pilot_day
from ehealthlab.errors import ConfigurationError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# each works on one value (ingest) and on an array of values, elementwise (the replay)
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {">=": operator.ge, "<=": operator.le}
#: a weight gain equal to `gain_kg` up to float rounding (72.0 - 70.0) breaches
_GAIN_TOLERANCE_KG = 1e-9


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """`metric` `op` `threshold`, e.g. bp_systolic >= 180 (canonical units)."""

    rule_id: str
    metric: str
    op: str
    threshold: float

    @overload
    def breached_by(self, value: float) -> bool: ...
    @overload
    def breached_by(self, value: FloatArray) -> BoolArray: ...
    def breached_by(self, value: float | FloatArray) -> bool | BoolArray:
        """Whether a value breaches the rule; given an array, the answer for each value (the
        alert-threshold replay asks this of a period's readings at once)."""
        return _OPERATORS[self.op](value, self.threshold)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class WeightGainRule:
    """A weight at least `gain_kg` above the lowest accepted weight of the preceding window."""

    rule_id: str = "weight_gain"
    metric: str = "body_weight"
    gain_kg: float = 2.0
    window: timedelta = timedelta(hours=72)

    @overload
    def gained(self, value: float, lowest: float) -> bool: ...
    @overload
    def gained(self, value: FloatArray, lowest: FloatArray) -> BoolArray: ...
    def gained(self, value: float | FloatArray, lowest: float | FloatArray) -> bool | BoolArray:
        """Whether a weight is `gain_kg` above the lowest weight of its window (elementwise for
        arrays, as the replay asks). The window is [measured - window, measured): a weight
        measured at the same instant does not precede it."""
        return value - lowest >= self.gain_kg - _GAIN_TOLERANCE_KG


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
    """An alert to raise unless one already exists for (patient, rule, day).

    `raised_at` is when the platform could first know: the reading's receive time, or later
    when the evidence completing the rule arrived later (a backlog's lower weight).
    """

    patient_id: UUID
    rule_id: str
    day: date
    reading: AttributedReading
    raised_at: datetime

    @property
    def key(self) -> tuple[UUID, str, date]:
        return (self.patient_id, self.rule_id, self.day)


def alert_candidates(
    readings: Iterable[AttributedReading],
    weight_history: Mapping[UUID, Sequence[AttributedReading]],
    rules: AlertRules = DEFAULT_RULES,
) -> list[AlertCandidate]:
    """The alerts these new readings raise, one per (patient, rule, day), first arrival first.

    `weight_history` holds, per patient, the accepted weights stored within the rule's window
    before and after the new ones (this batch's included). A new weight can breach the rule
    itself, or make a later-measured stored weight breach it: a backlog's lower weight that
    arrives after the higher one still raises the alert, whatever the arrival order.
    """
    by_metric: dict[str, list[ThresholdRule]] = {}
    for rule in rules.thresholds:
        by_metric.setdefault(rule.metric, []).append(rule)
    gain = rules.weight_gain
    found: dict[tuple[UUID, str, date], AlertCandidate] = {}

    def add(rule_id: str, reading: AttributedReading, raised_at: datetime) -> None:
        candidate = AlertCandidate(
            reading.patient_id, rule_id, pilot_day(reading.measured_at), reading, raised_at
        )
        found.setdefault(candidate.key, candidate)

    ordered = sorted(readings, key=lambda r: (r.received_at, r.measured_at))
    for reading in ordered:
        for rule in by_metric.get(reading.metric, ()):
            if rule.breached_by(reading.value):
                add(rule.rule_id, reading, reading.received_at)
        if reading.metric != gain.metric:
            continue
        history = weight_history.get(reading.patient_id, ())
        if _gained_weight(reading, history, gain):
            add(gain.rule_id, reading, reading.received_at)
        for later in _now_gained(reading, history, gain):
            add(gain.rule_id, later, max(later.received_at, reading.received_at))
    return list(found.values())


def _gained_weight(
    reading: AttributedReading, history: Sequence[AttributedReading], rule: WeightGainRule
) -> bool:
    start = reading.measured_at - rule.window
    earlier = [w.value for w in history if start <= w.measured_at < reading.measured_at]
    return bool(earlier) and rule.gained(reading.value, min(earlier))


def _now_gained(
    reading: AttributedReading, history: Sequence[AttributedReading], rule: WeightGainRule
) -> list[AttributedReading]:
    """Weights measured within the window after `reading` that are `gain_kg` above it, in
    measurement order: each breaches the rule now that `reading` is known."""
    end = reading.measured_at + rule.window
    return sorted(
        (
            w
            for w in history
            if reading.measured_at < w.measured_at <= end and rule.gained(w.value, reading.value)
        ),
        key=lambda w: w.measured_at,
    )


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
        if not math.isfinite(rule.threshold):
            raise ConfigurationError(
                f"alert rules {path}: rule {rule_id!r}: threshold must be a finite number"
            )
        thresholds[rule_id] = rule
    weight = document.get("weight_gain", {})
    weight_rule = WeightGainRule(
        gain_kg=float(weight.get("gain_kg", DEFAULT_RULES.weight_gain.gain_kg)),
        window=timedelta(hours=float(weight.get("window_hours", 72))),
    )
    return AlertRules(tuple(thresholds.values()), weight_rule)
