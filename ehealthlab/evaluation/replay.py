"""Alert-threshold replay: the alerts other thresholds would have raised over a past period.
Pure: arrays in, counts out (`replay_fetch` reads the store, `replay_command` is the CLI).

The decision is ingest's own: a threshold rule's `ThresholdRule.breached_by` and the weight
gain's `WeightGainRule.gained` (`ingest/alerts.py`), asked of a whole period's readings at once
with numpy instead of one reading at a time. Around them, the rules of `indicators.md`
("Clinical safety"), as ingest applies them:

- at most one alert per patient, rule and day of measurement (Europe/Rome day of the
  clock-corrected measurement time, `contract.pilot_time`): a (patient, rule, day) alerts when
  any accepted reading of that day breaches. Which reading raised it (the first to arrive)
  changes its raised time, not whether it exists, so the replay counts keys;
- `weight_gain`: a weight at least `gain_kg` above the patient's lowest accepted weight
  measured in [measured - window, measured); weights of the window before the period count
  as history, so the readings given start one window before the period for that metric.

An alert belongs to the period of its reading's day; patient-weeks are the period's enrolled
days (a day on which one of the patient's enrolments is active) ÷ 7, as `alerts_per_patient_week`
of indicators.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import numpy.typing as npt

from ehealthlab.contract.pilot_time import day_start, pilot_day
from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.replay_plan import ReplayPlan, Rule, Setting
from ehealthlab.ingest.alerts import ThresholdRule, WeightGainRule

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

POPULATIONS = ("real", "simulated")
BREAKDOWNS = ("area", "snai_class", "municipality")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch (how the replay's arrays hold times)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_us(microseconds: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(microseconds))


def _ints(values: object = ()) -> IntArray:
    return np.asarray(values, dtype=np.int64)


# -- the period and the data ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """`[start, end)` in whole days of Europe/Rome."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise InvalidInputError(f"--from {self.start} is not before --to {self.end}")

    @property
    def days(self) -> int:
        return (self.end - self.start).days


@dataclass(frozen=True, eq=False)
class MetricReadings:
    """Accepted readings of one metric: patient number, value (canonical unit) and
    clock-corrected measurement time (µs since the Unix epoch), one element each."""

    patient: IntArray = field(default_factory=_ints)
    value: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    measured_us: IntArray = field(default_factory=_ints)

    def __post_init__(self) -> None:
        if not len(self.patient) == len(self.value) == len(self.measured_us):
            raise ValueError("patient, value and measured_us differ in length")

    def __len__(self) -> int:
        return len(self.patient)


@dataclass(frozen=True, eq=False)
class StoredAlerts:
    """The alerts ingest stored for one rule in the period: patient number and day number."""

    patient: IntArray = field(default_factory=_ints)
    day: IntArray = field(default_factory=_ints)


@dataclass(frozen=True, eq=False)
class ReplayData:
    """What the replay reads: one population over one period.

    Patients are numbered 0..patients-1; `patient_days` holds each one's enrolled days in
    the period; `group[p]` is the patient's group of the breakdown (an index into `groups`,
    -1 for none: no enrolled day). `readings` per metric cover the period, and for the weight
    gain's metric the longest window before it too. `stored` holds the alerts table's alerts
    of the period per rule id."""

    period: Period
    population: str
    patients: int
    patient_days: IntArray
    readings: Mapping[str, MetricReadings]
    stored: Mapping[str, StoredAlerts] = field(default_factory=dict)
    by: str | None = None
    groups: tuple[str, ...] = ()
    group_titles: Mapping[str, str] = field(default_factory=dict)
    group: IntArray | None = None


def pilot_days(measured_us: IntArray, start: date) -> IntArray:
    """Each moment's pilot day, numbered from `start` (day 0; earlier days are negative).

    The boundaries are `contract.pilot_time.day_start` of each day in the span, so a day is 23
    or 25 hours long around the daylight-saving changes exactly as everywhere else."""
    if len(measured_us) == 0:
        return _ints()
    first = pilot_day(from_us(int(measured_us.min())))
    last = pilot_day(from_us(int(measured_us.max())))
    count = (last - first).days + 1
    bounds = _ints([to_us(day_start(first + timedelta(days=k))) for k in range(count + 1)])
    found = np.searchsorted(bounds, measured_us, side="right") - 1
    return found.astype(np.int64) + (first - start).days


def enrolled_days(
    days: int, patients: int, *, patient: IntArray, first: IntArray, last: IntArray, start: IntArray
) -> tuple[IntArray, IntArray]:
    """Per patient, the enrolled days of a `days`-day period, and the enrolment (an index into
    the arrays given) whose municipality the patient belongs to: the one active on their last
    enrolled day (the latest started, when two are; -1: no enrolled day).

    An enrolment runs from day `first` to day `last`, both included, numbered from the
    period's first day (it may reach outside the period); `start` orders enrolments that are
    active on the same last day."""
    first_in = np.maximum(first, 0)
    last_in = np.minimum(last, days - 1)
    touches = first_in <= last_in
    active = np.zeros((patients, days + 1), dtype=np.int16)
    np.add.at(active, (patient[touches], first_in[touches]), 1)
    np.add.at(active, (patient[touches], last_in[touches] + 1), -1)
    enrolled = np.cumsum(active, axis=1)[:, :days] > 0
    patient_days = enrolled.sum(axis=1).astype(np.int64)
    last_day = np.full(patients, -1, dtype=np.int64)
    np.maximum.at(last_day, patient[touches], last_in[touches])
    index = np.flatnonzero(touches)
    covers = index[
        (first_in[index] <= last_day[patient[index]]) & (last_day[patient[index]] <= last_in[index])
    ]
    order = covers[np.lexsort((covers, start[covers], patient[covers]))]
    chosen = np.full(patients, -1, dtype=np.int64)
    chosen[patient[order]] = order  # the last written wins: the latest start
    return patient_days, chosen


# -- the rules: ingest's decision, over arrays ------------------------------------------------


@dataclass(frozen=True, eq=False)
class OrderedReadings:
    """One metric's readings in order of patient and measurement time, with their alert keys
    (patient * period days + day): sorted once, asked by every setting of the metric's rules."""

    patient: IntArray
    measured_us: IntArray
    value: FloatArray
    day: IntArray
    key: IntArray
    in_period: npt.NDArray[np.bool_]
    origin: int  # the earliest time
    stretch: int  # the span of times, plus one

    @classmethod
    def of(cls, readings: MetricReadings, start: date, period_days: int) -> OrderedReadings:
        days = pilot_days(readings.measured_us, start)
        if len(readings) == 0:
            return cls(_ints(), _ints(), readings.value, _ints(), _ints(), days >= 0, 0, 1)
        origin = int(readings.measured_us.min())
        stretch = int(readings.measured_us.max()) - origin + 1
        if stretch * (int(readings.patient.max()) + 1) >= _LINE_LIMIT:
            raise InvalidInputError("the period is too long to replay at once; split it")
        order = np.argsort(readings.patient * stretch + (readings.measured_us - origin))
        patient = readings.patient[order]
        day = days[order]
        return cls(
            patient=patient,
            measured_us=readings.measured_us[order],
            value=readings.value[order],
            day=day,
            key=patient * period_days + day,
            in_period=(day >= 0) & (day < period_days),
            origin=origin,
            stretch=stretch,
        )

    def __len__(self) -> int:
        return len(self.patient)


_LINE_LIMIT = 2**62


def _distinct_sorted(keys: IntArray) -> IntArray:
    """The distinct values of an already sorted array, in O(n)."""
    if len(keys) == 0:
        return keys
    first = np.empty(len(keys), dtype=np.bool_)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]


def threshold_alert_keys(readings: OrderedReadings, rule: ThresholdRule) -> IntArray:
    """The (patient, day) keys on which any reading of the period breaches the rule: one
    alert each. Sorted, distinct."""
    breach = rule.breached_by(readings.value) & readings.in_period
    return _distinct_sorted(readings.key[breach])


def lowest_preceding(weights: OrderedReadings, window: timedelta) -> FloatArray:
    """For each weight, the lowest weight of the same patient measured in
    [measured - window, measured) (inf when there is none): each window found by binary search
    on one line of all patients' times, a patient's stretch a window apart from the next, and
    its minimum taken from a sparse table."""
    if len(weights) == 0:
        return np.zeros(0, dtype=np.float64)
    window_us = window // _MICROSECOND
    spacing = weights.stretch + window_us
    if spacing * (int(weights.patient.max()) + 1) >= _LINE_LIMIT:
        raise InvalidInputError("the period is too long to replay the weight gain at once")
    line = weights.patient * spacing + (weights.measured_us - weights.origin)
    lo = np.searchsorted(line, line - window_us, side="left")
    hi = np.searchsorted(line, line, side="left")  # a weight of the same instant does not precede
    return _range_min(weights.value, lo, hi)


def weight_gain_alert_keys(
    weights: OrderedReadings, rule: WeightGainRule, lowest: FloatArray | None = None
) -> IntArray:
    """The (patient, day) keys on which a weight of the period is `gain_kg` above the lowest
    weight of its window (`lowest_preceding`, given when already known for the window)."""
    if lowest is None:
        lowest = lowest_preceding(weights, rule.window)
    has = np.isfinite(lowest) & weights.in_period
    breach = np.zeros(len(weights), dtype=np.bool_)
    breach[has] = rule.gained(weights.value[has], lowest[has])
    return _distinct_sorted(weights.key[breach])


def _range_min(values: FloatArray, lo: IntArray, hi: IntArray) -> FloatArray:
    """min(values[lo[i]:hi[i]]) for each i (inf when empty), through a sparse table of as many
    levels as the longest range needs."""
    out = np.full(len(lo), np.inf)
    length = hi - lo
    if len(length) == 0 or int(length.max()) <= 0:
        return out
    levels = [values]
    while (1 << len(levels)) <= int(length.max()):
        step = 1 << (len(levels) - 1)
        previous = levels[-1]
        levels.append(np.minimum(previous[:-step], previous[step:]))
    level = np.zeros(len(lo), dtype=np.int64)
    positive = length > 0
    level[positive] = np.floor(np.log2(length[positive])).astype(np.int64)
    # log2 of a power of two may round below it; correct both ways
    level[positive & ((1 << (level + 1)) <= length)] += 1
    level[positive & ((1 << level) > length)] -= 1
    for j, table in enumerate(levels):
        at = np.flatnonzero(positive & (level == j))
        if at.size:
            out[at] = np.minimum(table[lo[at]], table[hi[at] - (1 << j)])
    return out


class _Prepared:
    """Each metric ordered once, each weight-gain window's lowest weights found once, for all
    the settings of a replay."""

    def __init__(self, data: ReplayData) -> None:
        self.data = data
        self._ordered: dict[str, OrderedReadings] = {}
        self._lowest: dict[tuple[str, timedelta], FloatArray] = {}

    def ordered(self, metric: str) -> OrderedReadings:
        if metric not in self._ordered:
            readings = self.data.readings.get(metric, MetricReadings())
            period = self.data.period
            self._ordered[metric] = OrderedReadings.of(readings, period.start, period.days)
        return self._ordered[metric]

    def alert_keys(self, rule: Rule) -> IntArray:
        """The alerts one rule setting raises over the period, as sorted distinct keys."""
        readings = self.ordered(rule.metric)
        if isinstance(rule, ThresholdRule):
            return threshold_alert_keys(readings, rule)
        window = (rule.metric, rule.window)
        if window not in self._lowest:
            self._lowest[window] = lowest_preceding(readings, rule.window)
        return weight_gain_alert_keys(readings, rule, self._lowest[window])


# -- the replay -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counts:
    """A rule setting's alerts in one group (or all), with the group's denominators."""

    alerts: int
    patients_flagged: int
    patients: int  # with at least one enrolled day in the period
    patient_days: int

    @property
    def patient_weeks(self) -> float:
        return self.patient_days / 7

    @property
    def alerts_per_patient_week(self) -> float | None:
        """indicators.md's `alerts_per_patient_week`; None with no enrolled day."""
        return self.alerts / self.patient_weeks if self.patient_days else None

    @property
    def alerts_per_100_patient_weeks(self) -> float | None:
        per_week = self.alerts_per_patient_week
        return None if per_week is None else 100 * per_week


@dataclass(frozen=True, slots=True)
class Agreement:
    """The current setting's replay beside the alerts ingest stored for the rule."""

    stored: int
    stored_not_replayed: int
    replayed_not_stored: int

    @property
    def agrees(self) -> bool:
        return self.stored_not_replayed == 0 and self.replayed_not_stored == 0


@dataclass(frozen=True, slots=True)
class SettingResult:
    setting: Setting
    all: Counts
    groups: dict[str, Counts]
    agreement: Agreement | None  # for the current settings only


@dataclass(frozen=True)
class ReplayResult:
    period: Period
    population: str
    by: str | None
    groups: tuple[str, ...]
    group_titles: Mapping[str, str]
    #: the denominators: patients with an enrolled day, and their enrolled days
    everyone: Counts
    everyone_groups: dict[str, Counts]
    results: tuple[SettingResult, ...]
    #: the current rules together: their alerts, and the patients any of them flagged
    current_total: Counts
    current_total_groups: dict[str, Counts]
    #: every stored alert of the period beside the current rules' replay
    current_agreement: Agreement
    #: stored alerts of rules that are not among the current rules, per rule id
    stored_elsewhere: dict[str, int]

    @property
    def agrees(self) -> bool:
        return self.current_agreement.agrees


def replay(data: ReplayData, plan: ReplayPlan) -> ReplayResult:
    """Each setting of the plan over the data, counted for everyone and per group, and the
    current settings compared with the alerts ingest stored."""
    prepared = _Prepared(data)
    tally = _Tally(data)
    results: list[SettingResult] = []
    current: list[IntArray] = []
    for setting in plan.settings:
        keys = prepared.alert_keys(setting.rule)
        agreement = None
        if setting.current:
            stored = data.stored.get(setting.rule_id, StoredAlerts())
            agreement = _compare(keys, stored, data.period.days)
            current.append(keys)
        results.append(SettingResult(setting, *tally.counts(keys), agreement))
    current_ids = {s.rule_id for s in plan.settings if s.current}
    elsewhere = {
        rule: len(stored.patient)
        for rule, stored in sorted(data.stored.items())
        if rule not in current_ids and len(stored.patient)
    }
    agreements = [r.agreement for r in results if r.agreement is not None]
    agreement = Agreement(
        sum(len(s.patient) for s in data.stored.values()),
        sum(a.stored_not_replayed for a in agreements) + sum(elsewhere.values()),
        sum(a.replayed_not_stored for a in agreements),
    )
    total, total_groups = tally.counts(np.concatenate(current) if current else _ints())
    everyone, everyone_groups = tally.counts(_ints())
    return ReplayResult(
        period=data.period,
        population=data.population,
        by=data.by,
        groups=data.groups,
        group_titles=dict(data.group_titles),
        everyone=everyone,
        everyone_groups=everyone_groups,
        results=tuple(results),
        current_total=total,
        current_total_groups=total_groups,
        current_agreement=agreement,
        stored_elsewhere=elsewhere,
    )


def _compare(keys: IntArray, stored: StoredAlerts, period_days: int) -> Agreement:
    stored_keys = np.unique(stored.patient * period_days + stored.day)
    return Agreement(
        stored=len(stored.patient),
        stored_not_replayed=len(np.setdiff1d(stored_keys, keys, assume_unique=True)),
        replayed_not_stored=len(np.setdiff1d(keys, stored_keys, assume_unique=True)),
    )


class _Tally:
    """Counts alert keys (patient * days + day) for everyone and per group."""

    def __init__(self, data: ReplayData) -> None:
        self.days = data.period.days
        self.labels = data.groups
        self.group = (
            data.group if data.group is not None else np.full(data.patients, -1, dtype=np.int64)
        )
        enrolled = data.patient_days > 0
        self.patients = int(enrolled.sum())
        self.patient_days = int(data.patient_days.sum())
        grouped = self.group >= 0
        width = len(self.labels)
        self.group_patients = np.bincount(self.group[grouped & enrolled], minlength=width)
        self.group_days = np.bincount(
            self.group[grouped], weights=data.patient_days[grouped], minlength=width
        )

    def counts(self, keys: IntArray) -> tuple[Counts, dict[str, Counts]]:
        """Alerts (each key one; the same key under two rules is two alerts) and patients
        flagged (distinct)."""
        patient = keys // self.days
        flagged = np.unique(patient)  # keys of one rule come sorted: cheap then
        everyone = Counts(len(keys), len(flagged), self.patients, self.patient_days)
        if not self.labels:
            return everyone, {}
        width = len(self.labels)
        alerts = np.bincount(_in_groups(self.group[patient]), minlength=width)
        patients = np.bincount(_in_groups(self.group[flagged]), minlength=width)
        return everyone, {
            label: Counts(
                int(alerts[i]),
                int(patients[i]),
                int(self.group_patients[i]),
                int(self.group_days[i]),
            )
            for i, label in enumerate(self.labels)
        }


def _in_groups(groups: IntArray) -> IntArray:
    return groups[groups >= 0]
