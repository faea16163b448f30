"""The indicators of indicators.md v1.1, per group, from a Dataset. Pure numpy.

How a group is cut: every group is a *selection* of enrolled days — (enrolment, day) pairs
of the period — and an indicator counts the patients, readings, seqs and alerts of the days
selected. The groups of people (`all`, `municipality`, `snai_class`, `area`) select all the
days of their patients, each patient placed by the enrolment active on their last enrolled
day. The groups of devices (`startup`, `device_type`) select the days of their devices'
enrolments, and a `mini_pilot` the days that belong to it (its range, start-ups and
municipalities); there a patient may count in several groups. A reading, a seq or an alert
belongs to the enrolment of its device on its day of measurement, as ingest attributes them.

Choices the spec leaves open, made here and documented in docs/indicators.md:
- two enrolments of one patient active the same day: the day's plan is their union, a metric
  planned by both expecting the larger count;
- an enrolled day with an empty care plan has nothing to miss: it is adherent;
- `loss_rate` counts seqs per device *and enrolment* (a device handed to another patient
  starts a new count), over the selected days, from the lowest to the highest seq seen.

Arrays are cut per group by enrolment (readings sorted by enrolment once), so the work over
all groups is proportional to the data, not to data times groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ehealthlab.evaluation.bootstrap import mean_ci95, seed_for
from ehealthlab.evaluation.dataset import (
    ADHERENT_AT_LEAST,
    RETENTION_DAYS,
    BoolArray,
    Dataset,
    FloatArray,
    IntArray,
)
from ehealthlab.evaluation.economics import EconomicInputs
from ehealthlab.evaluation.reading_counts import ByEnrolment, count_readings
from ehealthlab.evaluation.registry import Mean, Value, values_of

SNAI_LABELS = {
    "A": "SNAI A, pole",
    "B": "SNAI B, inter-municipal pole",
    "C": "SNAI C, belt",
    "D": "SNAI D, intermediate",
    "E": "SNAI E, peripheral",
    "F": "SNAI F, ultra-peripheral",
}
AREA_LABELS = {"centre": "Centres (SNAI A-C)", "inner": "Inner areas (SNAI D-F)"}

#: the economic model with its parameters: one group's inputs -> the six economic indicators
EconomicModel = Callable[[EconomicInputs], Mapping[str, float | None]]


@dataclass(frozen=True, slots=True)
class GroupResult:
    key: str
    label: str
    patients: int
    values: dict[str, Value]
    #: per patient of the group, each additive component of a ratio (for intervals of
    #: differences between groups: patients are resampled, ratios of sums recomputed)
    per_patient: dict[str, FloatArray]
    #: the samples behind the means: per-patient adherence, SUS scores
    samples: dict[str, FloatArray]


@dataclass(frozen=True, slots=True)
class Evaluation:
    period_start: str
    period_end: str
    population: str
    grouping: str
    seed: int
    groups: dict[str, GroupResult]
    all: GroupResult


class _Prepared:
    """What every group's computation shares: the active-day matrix, where each patient
    belongs, and the per-enrolment sort of every array."""

    def __init__(self, data: Dataset, window: tuple[int, int] | None) -> None:
        self.data = data
        e = data.enrolments
        self.days = data.period.days
        self.window = window or (0, self.days - 1)
        first, last = self.window
        self.first_day = np.maximum(e.first_day, first)
        self.last_day = np.minimum(e.last_day, last)
        day = np.arange(self.days)
        self.active: BoolArray = (day[None, :] >= self.first_day[:, None]) & (
            day[None, :] <= self.last_day[:, None]
        )
        self.readings = ByEnrolment.of(data.readings.enrolment, len(e))
        self.day_counts = ByEnrolment.of(data.day_counts.enrolment, len(e))
        self.alerts = ByEnrolment.of(data.alerts.enrolment, len(e))
        self.patient_municipality = self._place_patients()
        self.enrolled_patients = np.flatnonzero(self.patient_municipality >= 0)

    def _place_patients(self) -> IntArray:
        """Each patient's municipality: that of the enrolment active on their last enrolled
        day (the latest-starting one if several); -1 for a patient without enrolled day."""
        e = self.data.enrolments
        placed = np.full(self.data.patients, -1, dtype=np.int64)
        touching = np.flatnonzero(self.first_day <= self.last_day)
        if touching.size == 0:
            return placed
        last = np.full(self.data.patients, -1, dtype=np.int64)
        np.maximum.at(last, e.patient[touching], self.last_day[touching])
        candidates = touching[self.last_day[touching] == last[e.patient[touching]]]
        starts = np.array([e.start_date[i].toordinal() for i in candidates], dtype=np.int64)
        # sorted by (patient, start, index): the last of each patient wins
        ranked = candidates[np.lexsort((candidates, starts, e.patient[candidates]))]
        placed[e.patient[ranked]] = e.municipality[ranked]
        return placed


def evaluate(
    data: Dataset,
    grouping: str,
    *,
    seed: int,
    economics: EconomicModel | None = None,
    window: tuple[int, int] | None = None,
) -> Evaluation:
    """Every indicator for `all` and for each group of `grouping`; `window` (first and last
    day, included) narrows the period, for series (the report's weeks). Unparsable messages
    are counted by receipt over the whole period, so a window leaves them null."""
    prepared = _Prepared(data, window)
    everyone = np.arange(len(data.enrolments))
    total_patient_days = float(_patient_day_total(prepared, everyone, prepared.active))
    compute = _GroupComputation(prepared, seed, grouping, economics, total_patient_days)
    all_result = compute.group("all", "All municipalities", everyone, prepared.active, "all")
    groups: dict[str, GroupResult] = {}
    if grouping != "all":
        for key, label, rows, selected in _groups(prepared, grouping):
            groups[key] = compute.group(key, label, rows, selected, grouping)
    return Evaluation(
        data.period.start.isoformat(), data.period.end.isoformat(), data.population,
        grouping, seed, dict(sorted(groups.items())), all_result,
    )  # fmt: skip


def _patient_day_total(prepared: _Prepared, rows: IntArray, selected: BoolArray) -> int:
    enrolled = _by_patient(prepared.data.enrolments.patient[rows], selected)[1]
    return int(enrolled.sum())


def _groups(prepared: _Prepared, grouping: str) -> Iterator[tuple[str, str, IntArray, BoolArray]]:
    """(key, label, enrolment rows, their selected days) of each group of `grouping`."""
    data = prepared.data
    e = data.enrolments
    if grouping in {"municipality", "snai_class", "area"}:
        keys_of_municipality = [
            m.istat_code if grouping == "municipality" else
            m.snai_class if grouping == "snai_class" else m.area
            for m in data.municipalities
        ]  # fmt: skip
        placed = prepared.patient_municipality[e.patient]
        enrolment_key = np.array(
            [keys_of_municipality[m] if m >= 0 else "" for m in placed], dtype=object
        )
        labels = {
            "municipality": {m.istat_code: m.name for m in data.municipalities},
            "snai_class": SNAI_LABELS,
            "area": AREA_LABELS,
        }[grouping]
        for key in sorted(set(enrolment_key) - {""}):
            rows = np.flatnonzero(enrolment_key == key)
            yield key, labels.get(key, key), rows, prepared.active[rows]
    elif grouping in {"startup", "device_type"}:
        of_device = data.device_startup if grouping == "startup" else data.device_type
        enrolment_key = np.array([of_device[d] for d in e.device], dtype=object)
        for key in sorted(set(enrolment_key)):
            rows = np.flatnonzero(enrolment_key == key)
            label = data.startup_names.get(key, key) if grouping == "startup" else key
            yield key, label, rows, prepared.active[rows]
    elif grouping == "mini_pilot":
        codes = [m.istat_code for m in data.municipalities]
        day = np.arange(prepared.days)
        for pilot in data.mini_pilots:
            member = np.array(
                [data.device_startup[d] in pilot.startups and codes[m] in pilot.municipalities
                 for d, m in zip(e.device, e.municipality, strict=True)], dtype=bool,
            )  # fmt: skip
            in_range = (day >= pilot.first_day) & (day <= pilot.last_day)
            rows = np.flatnonzero(member)
            yield pilot.key, pilot.name, rows, prepared.active[rows] & in_range[None, :]
    else:
        raise ValueError(f"unknown grouping {grouping!r}")


def _by_patient(patient_of_row: IntArray, selected: BoolArray) -> tuple[IntArray, BoolArray]:
    """(the patients, their enrolled-day matrix): rows of the same patient OR-ed together."""
    patients, local = np.unique(patient_of_row, return_inverse=True)
    enrolled = np.zeros((patients.size, selected.shape[1]), dtype=bool)
    np.logical_or.at(enrolled, local, selected)
    return patients, enrolled


class _GroupComputation:
    def __init__(
        self,
        prepared: _Prepared,
        seed: int,
        grouping: str,
        economics: EconomicModel | None,
        total_patient_days: float,
    ) -> None:
        self.p = prepared
        self.seed = seed
        self.grouping = grouping
        self.economics = economics
        self.total_patient_days = total_patient_days
        self.windowed = prepared.window != (0, prepared.days - 1)

    def group(
        self, key: str, label: str, rows: IntArray, selected: BoolArray, grouping: str
    ) -> GroupResult:
        data = self.p.data
        e = data.enrolments
        days = self.p.days
        keep = selected.any(axis=1)
        rows, selected = rows[keep], selected[keep]

        patient_of_row = e.patient[rows]
        patients, local_patient = np.unique(patient_of_row, return_inverse=True)
        enrolled = np.zeros((patients.size, days), dtype=bool)
        np.logical_or.at(enrolled, local_patient, selected)
        enrolled_days = enrolled.sum(axis=1)

        n = patients.size
        first, last = self.p.window
        recent_days = slice(max(last + 1 - RETENTION_DAYS, first), last + 1)
        counted = count_readings(
            data.readings, self.p.readings, plan=e.plan[rows], rows=rows, selected=selected,
            local_patient=local_patient, enrolled=enrolled, since_day=recent_days.start,
        )  # fmt: skip
        adherence = np.divide(
            counted.adherent_days, enrolled_days, out=np.zeros(n), where=enrolled_days > 0
        )
        recent = enrolled[:, recent_days].any(axis=1)
        retained = recent & counted.measured_since
        latency = counted.latency
        per_patient: dict[str, FloatArray] = {
            "patients": np.ones(n),
            "patient_days": enrolled_days.astype(np.float64),
            "adherent_patients": (adherence >= ADHERENT_AT_LEAST).astype(np.float64),
            "completeness_met": counted.completeness_met,
            "completeness_expected": counted.completeness_expected,
            "retained": retained.astype(np.float64),
            "recent_patients": np.asarray(recent, dtype=np.float64),
            "accepted": counted.accepted,
            "late": counted.late,
            "clock_corrected": counted.clock_corrected,
        }
        c: dict[str, object] = {
            "patients": int(patients.size),
            "patient_days": int(enrolled_days.sum()),
            "population": self._population(patients),
            "adherence": self._mean(adherence, grouping, key, "adherence"),
            "adherent_patients": int((adherence >= ADHERENT_AT_LEAST).sum()),
            "completeness_met": round(float(counted.completeness_met.sum())),
            "completeness_expected": round(float(counted.completeness_expected.sum())),
            "retained": int(retained.sum()),
            "recent_patients": int(recent.sum()),
            "accepted": int(latency.size),
            "latency_p50_s": _percentile(latency, 50),
            "latency_p95_s": _percentile(latency, 95),
            "late": round(float(counted.late.sum())),
            "clock_corrected": round(float(counted.clock_corrected.sum())),
        }
        seqs = self._seqs(rows, selected, local_patient, n)
        alerts = self._alerts(rows, selected, local_patient, n)
        for name, array in (*seqs.items(), *alerts.items()):
            per_patient[name] = array
        per_patient["accepted_or_rejected"] = per_patient["accepted"] + per_patient["rejected"]
        per_patient["accepted_or_duplicate"] = per_patient["accepted"] + per_patient["duplicates"]
        for name in ("taken", "lost", "duplicates", "rejected", "accepted_or_rejected",
                     "accepted_or_duplicate", "alerts", "acknowledged",
                     "acknowledged_within_24h"):  # fmt: skip
            c[name] = round(float(per_patient[name].sum()))
        c["alert_ack_p50_h"] = _percentile(self._ack_hours(rows, selected), 50)
        scores = self._sus(key, patients, grouping)
        c["sus_mean"] = self._mean(scores, grouping, key, "sus_mean")
        c["sus_responses"] = int(scores.size)
        c["unparsable_messages"] = None if self.windowed else self._unparsable(key, grouping)
        if self.economics is not None:
            c.update(self._economics(rows, selected, patients, enrolled_days, c))
        samples = {"adherence": adherence, "sus_mean": scores}
        return GroupResult(key, label, n, values_of(c), per_patient, samples)

    def _mean(self, values: FloatArray, grouping: str, key: str, indicator: str) -> Mean | None:
        """The mean with its interval, seeded by (grouping, group, indicator): the group
        `all` has the same interval whatever grouping was asked for."""
        if values.size == 0:
            return None
        ci = mean_ci95(values, seed_for(self.seed, grouping, key, indicator))
        return Mean(float(values.mean()), ci)

    def _population(self, patients: IntArray) -> int:
        places = self.p.patient_municipality[patients]
        distinct = np.unique(places[places >= 0])
        return sum(self.p.data.municipalities[m].population for m in distinct)

    def _seqs(
        self, rows: IntArray, selected: BoolArray, local_patient: IntArray, n: int
    ) -> dict[str, FloatArray]:
        """Per patient: seqs taken and lost (per enrolment, over the selected days),
        duplicates and rejects."""
        positions, local_row = self.p.day_counts.take(rows)
        d = self.p.data.day_counts
        chosen = selected[local_row, d.day[positions]]
        positions, local_row = positions[chosen], local_row[chosen]
        taken: FloatArray = np.zeros(n)
        arrived = _sum_by(local_patient[local_row], d.distinct_seqs[positions], n)
        if positions.size:
            # local_row is non-decreasing: one run per enrolment
            starts = np.flatnonzero(np.r_[True, np.diff(local_row) != 0])
            lowest = np.minimum.reduceat(d.min_seq[positions], starts)
            highest = np.maximum.reduceat(d.max_seq[positions], starts)
            per_enrolment = np.maximum(highest - lowest + 1, 0)
            taken = _sum_by(local_patient[local_row[starts]], per_enrolment, n)
        patient = local_patient[local_row]
        return {
            "taken": taken,
            "lost": np.maximum(taken - arrived, 0.0),
            "duplicates": _sum_by(patient, d.duplicates[positions], n),
            "rejected": _sum_by(patient, d.rejected[positions], n),
        }

    def _selected_alerts(self, rows: IntArray, selected: BoolArray) -> tuple[IntArray, IntArray]:
        positions, local_row = self.p.alerts.take(rows)
        chosen = selected[local_row, self.p.data.alerts.day[positions]]
        return positions[chosen], local_row[chosen]

    def _alerts(
        self, rows: IntArray, selected: BoolArray, local_patient: IntArray, n: int
    ) -> dict[str, FloatArray]:
        positions, local_row = self._selected_alerts(rows, selected)
        hours = self.p.data.alerts.ack_hours[positions]
        patient = local_patient[local_row]
        answered = ~np.isnan(hours)
        in_a_day = answered & (np.nan_to_num(hours, nan=np.inf) <= 24.0)
        return {
            "alerts": _sum_by(patient, None, n),
            "acknowledged": _sum_by(patient, answered, n),
            "acknowledged_within_24h": _sum_by(patient, in_a_day, n),
        }

    def _ack_hours(self, rows: IntArray, selected: BoolArray) -> FloatArray:
        positions, _ = self._selected_alerts(rows, selected)
        hours = self.p.data.alerts.ack_hours[positions]
        return hours[~np.isnan(hours)]

    def _sus(self, key: str, patients: IntArray, grouping: str) -> FloatArray:
        """A response counts in the group of its patient, else of its municipality."""
        s = self.p.data.sus
        in_group = np.zeros(self.p.data.patients + 1, dtype=bool)  # last slot: no patient
        in_group[patients] = True
        placed = np.where(s.patient >= 0, self.p.patient_municipality[s.patient], -1)
        by_patient = (s.patient >= 0) & (placed >= 0)
        if grouping == "all":
            chosen = np.ones(s.score.size, dtype=bool)
        elif grouping in {"municipality", "snai_class", "area"}:
            municipality = np.where(by_patient, placed, s.municipality)
            chosen = np.array([_municipality_key(self.p.data, m, grouping) == key
                               for m in municipality], dtype=bool)  # fmt: skip
        else:
            chosen = by_patient & in_group[s.patient]
            if grouping == "mini_pilot":
                pilot = next(p for p in self.p.data.mini_pilots if p.key == key)
                codes = [self.p.data.municipalities[m].istat_code for m in s.municipality]
                chosen |= ~by_patient & np.array(
                    [c in pilot.municipalities for c in codes], dtype=bool
                ) & (s.day >= pilot.first_day) & (s.day <= pilot.last_day)  # fmt: skip
        first, last = self.p.window
        chosen &= (s.day >= first) & (s.day <= last)
        scores: FloatArray = s.score[chosen]
        return scores

    def _unparsable(self, key: str, grouping: str) -> int | None:
        counts = self.p.data.unparsable_messages
        if grouping == "all":
            return sum(counts.values())
        if grouping == "startup":
            return counts.get(key, 0)
        return None

    def _economics(
        self,
        rows: IntArray,
        selected: BoolArray,
        patients: IntArray,
        enrolled_days: IntArray,
        components: Mapping[str, object],
    ) -> Mapping[str, float | None]:
        assert self.economics is not None  # noqa: S101 - checked by the caller
        data = self.p.data
        device_days: dict[str, float] = {}
        for row, days in zip(rows, selected.sum(axis=1), strict=True):
            kind = data.device_type[data.enrolments.device[row]]
            device_days[kind] = device_days.get(kind, 0.0) + float(days)
        places = self.p.patient_municipality[patients]
        codes = [data.municipalities[m].istat_code for m in places]
        share = (
            float(enrolled_days.sum()) / self.total_patient_days if self.total_patient_days else 0.0
        )
        alerts = components["alerts"]
        assert isinstance(alerts, int)  # noqa: S101 - set above
        return self.economics(
            EconomicInputs(enrolled_days.astype(np.float64), codes, device_days, alerts,
                           float(self.p.window[1] - self.p.window[0] + 1), min(share, 1.0))
        )  # fmt: skip


def _municipality_key(data: Dataset, municipality: int, grouping: str) -> str:
    if municipality < 0:
        return ""
    m = data.municipalities[municipality]
    return {"municipality": m.istat_code, "snai_class": m.snai_class, "area": m.area}[grouping]


def _percentile(values: FloatArray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def _sum_by(patient: IntArray, weights: npt.ArrayLike | None, n: int) -> FloatArray:
    """Per patient (0..n-1), the sum of `weights` (or the count) of their items."""
    summed: FloatArray = np.bincount(patient, weights=weights, minlength=n).astype(np.float64)
    return summed
