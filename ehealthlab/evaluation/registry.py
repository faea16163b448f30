"""The pilot's indicators, each declared once (indicators.md v1.1). Pure.

A declaration says what an indicator is — id, MAST domain and RE-AIM dimension, unit,
definition — and how its number is made: a numerator and a denominator with a factor, the
model DHIS2 uses, over *components* that the computation adds up per group
(`evaluation.compute`). From the same declaration come the number (`value_of`), its FHIR
`Measure` and its documentation (`docs/indicators.md`, generated: a test keeps it current),
so the three cannot drift apart.

Kinds: a `COUNT` is its numerator; a `RATIO` is numerator ÷ denominator × factor, `null` when
the denominator is empty (never 0); a `MEAN` over patients and a `PERCENTILE` are computed
from per-patient or per-reading arrays and carried as they are; a `MODEL` is a figure of the
economic model (`evaluation.economics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    COUNT = "count"
    RATIO = "ratio"
    MEAN = "mean"
    PERCENTILE = "percentile"
    MODEL = "model"


class Mast(StrEnum):
    """The domains of MAST (Model for ASsessment of Telemedicine)."""

    APPLICATION = "Health problem and characteristics of the application"
    SAFETY = "Safety"
    CLINICAL = "Clinical effectiveness"
    PATIENT = "Patient perspectives"
    ECONOMIC = "Economic aspects"
    ORGANISATIONAL = "Organisational aspects"


class ReAim(StrEnum):
    REACH = "Reach"
    EFFECTIVENESS = "Effectiveness"
    ADOPTION = "Adoption"
    IMPLEMENTATION = "Implementation"
    MAINTENANCE = "Maintenance"


class Section(StrEnum):
    """The headings of indicators.md, in its order."""

    REACH = "Reach and adoption"
    ADHERENCE = "Patient adherence"
    RELIABILITY = "Technical reliability over broadband"
    SAFETY = "Clinical safety and provider response"
    ECONOMIC = "Economic sustainability"
    RESPONSE = "User and public-sector response"


@dataclass(frozen=True, slots=True)
class Term:
    """One side of an indicator: the component the computation sums, and what it counts."""

    component: str
    text: str


@dataclass(frozen=True, slots=True)
class Mean:
    """A mean over patients (or responses) with its seeded 95% bootstrap interval."""

    value: float
    ci95: tuple[float, float] | None

    def as_json(self) -> dict[str, object]:
        return {"value": self.value, "ci95": list(self.ci95) if self.ci95 else None}


Value = float | int | Mean | None


@dataclass(frozen=True, slots=True)
class Indicator:
    id: str
    title: str
    section: Section
    mast: Mast
    reaim: ReAim
    #: UCUM unit of the value ("1" for a share)
    unit: str
    definition: str
    kind: Kind
    numerator: Term
    denominator: Term | None = None
    factor: float = 1.0
    #: a higher value is better (True), worse (False), or neither (None)
    higher_is_better: bool | None = None

    def value_of(self, components: Mapping[str, object]) -> Value:
        """This indicator's number from a group's components."""
        numerator = components.get(self.numerator.component)
        if self.kind is Kind.RATIO:
            assert self.denominator is not None  # noqa: S101  # a declaration's invariant
            denominator = components.get(self.denominator.component)
            if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
                return None
            if denominator == 0:
                return None
            return float(numerator) / float(denominator) * self.factor
        if numerator is None or isinstance(numerator, int | float | Mean):
            return numerator
        raise TypeError(f"component {self.numerator.component!r} is {type(numerator).__name__}")


def _share(  # noqa: PLR0917 - the order of Indicator's own fields
    id_: str,
    title: str,
    section: Section,
    mast: Mast,
    reaim: ReAim,
    definition: str,
    numerator: Term,
    denominator: Term,
    *,
    higher_is_better: bool | None,
) -> Indicator:
    return Indicator(id_, title, section, mast, reaim, "1", definition, Kind.RATIO, numerator,
                     denominator, 1.0, higher_is_better)  # fmt: skip


_PATIENTS = Term("patients", "patients with at least one enrolled day in the period")
_ACCEPTED = Term("accepted", "accepted readings")
_ALERTS = Term("alerts", "alerts raised (day of measurement in the period)")

INDICATORS: tuple[Indicator, ...] = (
    # -- reach and adoption --
    Indicator(
        "patients_enrolled", "Patients enrolled", Section.REACH, Mast.APPLICATION, ReAim.REACH,
        "{patients}", "Patients with at least one enrolled day in the period.",
        Kind.COUNT, _PATIENTS, higher_is_better=True,
    ),
    Indicator(
        "patient_days", "Patient-days", Section.REACH, Mast.APPLICATION, ReAim.REACH, "d",
        "Sum over patients of enrolled days (a day on which one of the patient's enrolments "
        "is active at 12:00, Europe/Rome).",
        Kind.COUNT, Term("patient_days", "enrolled days, summed over patients"),
        higher_is_better=True,
    ),
    Indicator(
        "reach_per_1000", "Reach per 1,000 residents", Section.REACH, Mast.APPLICATION,
        ReAim.REACH, "/1000",
        "Patients enrolled per 1,000 residents of the distinct municipalities of the group's "
        "patients (population from the municipality reference data).",
        Kind.RATIO, _PATIENTS,
        Term("population", "residents of the distinct municipalities of the group's patients"),
        1000.0, higher_is_better=True,
    ),
    # -- patient adherence --
    Indicator(
        "adherence", "Adherence", Section.ADHERENCE, Mast.PATIENT, ReAim.IMPLEMENTATION, "1",
        "Per patient, adherent days ÷ enrolled days, where an adherent day has at least one "
        "accepted reading of every metric planned that day; the mean over patients, with a "
        "95% percentile bootstrap interval (2,000 resamples of patients, seeded).",
        Kind.MEAN, Term("adherence", "mean of each patient's adherent days ÷ enrolled days"),
        _PATIENTS, higher_is_better=True,
    ),
    _share(
        "adherent_patients_share", "Adherent patients", Section.ADHERENCE, Mast.PATIENT,
        ReAim.IMPLEMENTATION, "Share of patients whose adherence is at least 0.8.",
        Term("adherent_patients", "patients whose adherence is ≥ 0.8"), _PATIENTS,
        higher_is_better=True,
    ),
    _share(
        "completeness", "Completeness", Section.ADHERENCE, Mast.PATIENT, ReAim.IMPLEMENTATION,
        "Σ over patients, enrolled days and planned metrics of min(accepted readings, expected "
        "readings) ÷ Σ expected readings.",
        Term("completeness_met", "Σ min(accepted, expected) over patient-days and metrics"),
        Term("completeness_expected", "Σ expected readings over patient-days and metrics"),
        higher_is_better=True,
    ),
    _share(
        "retention_share", "Retention", Section.ADHERENCE, Mast.PATIENT, ReAim.MAINTENANCE,
        "Among patients with an enrolled day in the last 7 days of the period, the share with "
        "at least one accepted reading in those 7 days.",
        Term("retained", "patients with an accepted reading in the last 7 days"),
        Term("recent_patients", "patients with an enrolled day in the last 7 days"),
        higher_is_better=True,
    ),
    # -- technical reliability --
    Indicator(
        "loss_rate", "Loss rate", Section.RELIABILITY, Mast.APPLICATION, ReAim.IMPLEMENTATION,
        "1",
        "Per device and enrolment, over readings measured in the period: taken = max seq − "
        "min seq + 1, arrived = distinct seqs seen (accepted, duplicate or rejected); "
        "1 − Σ arrived ÷ Σ taken.",
        Kind.RATIO, Term("lost", "Σ taken − Σ arrived"), Term("taken", "Σ taken"),
        higher_is_better=False,
    ),
    Indicator(
        "latency_p50_s", "Latency, median", Section.RELIABILITY, Mast.APPLICATION,
        ReAim.IMPLEMENTATION, "s",
        "Median of receive time − time of measurement over accepted readings, in seconds; a "
        "negative difference (a device clock ahead by less than the correction threshold) "
        "counts as 0.",
        Kind.PERCENTILE, Term("latency_p50_s", "50th percentile of latencies"), _ACCEPTED,
        higher_is_better=False,
    ),
    Indicator(
        "latency_p95_s", "Latency, 95th percentile", Section.RELIABILITY, Mast.APPLICATION,
        ReAim.IMPLEMENTATION, "s",
        "95th percentile of receive time − time of measurement over accepted readings, in "
        "seconds; a negative difference counts as 0.",
        Kind.PERCENTILE, Term("latency_p95_s", "95th percentile of latencies"), _ACCEPTED,
        higher_is_better=False,
    ),
    _share(
        "late_share", "Late readings", Section.RELIABILITY, Mast.APPLICATION,
        ReAim.IMPLEMENTATION,
        "Share of accepted readings whose latency exceeds 3,600 s (store-and-forward backlog).",
        Term("late", "accepted readings with latency > 3,600 s"), _ACCEPTED,
        higher_is_better=False,
    ),
    _share(
        "rejected_share", "Rejected readings", Section.RELIABILITY, Mast.APPLICATION,
        ReAim.IMPLEMENTATION, "Rejected readings ÷ (accepted + rejected).",
        Term("rejected", "rejected readings"),
        Term("accepted_or_rejected", "accepted + rejected readings"),
        higher_is_better=False,
    ),
    _share(
        "duplicate_share", "Duplicate readings", Section.RELIABILITY, Mast.APPLICATION,
        ReAim.IMPLEMENTATION, "Duplicate readings ÷ (accepted + duplicate).",
        Term("duplicates", "duplicate readings"),
        Term("accepted_or_duplicate", "accepted + duplicate readings"),
        higher_is_better=False,
    ),
    _share(
        "clock_corrected_share", "Clock-corrected readings", Section.RELIABILITY,
        Mast.APPLICATION, ReAim.IMPLEMENTATION,
        "Share of accepted readings whose time was clock-corrected.",
        Term("clock_corrected", "accepted readings with a corrected time"), _ACCEPTED,
        higher_is_better=False,
    ),
    Indicator(
        "unparsable_messages", "Unparsable messages", Section.RELIABILITY, Mast.APPLICATION,
        ReAim.IMPLEMENTATION, "{messages}",
        "Messages refused whole (no readable time of measurement), received in the period, "
        "per start-up; counted apart from the readings, so only in the groups `all` and "
        "`startup`.",
        Kind.COUNT, Term("unparsable_messages", "messages refused whole"),
        higher_is_better=False,
    ),
    # -- clinical safety and provider response --
    Indicator(
        "alerts", "Alerts", Section.SAFETY, Mast.SAFETY, ReAim.EFFECTIVENESS, "{alerts}",
        "Alerts raised (at most one per patient, rule and day of measurement).",
        Kind.COUNT, _ALERTS,
    ),
    Indicator(
        "alerts_per_patient_week", "Alerts per patient-week", Section.SAFETY, Mast.SAFETY,
        ReAim.EFFECTIVENESS, "/wk", "Alerts ÷ (patient-days ÷ 7).",
        Kind.RATIO, _ALERTS, Term("patient_days", "patient-days"), 7.0,
    ),
    Indicator(
        "alert_ack_p50_h", "Alert response, median", Section.SAFETY, Mast.ORGANISATIONAL,
        ReAim.IMPLEMENTATION, "h",
        "Median hours from an alert's raised time (the receive time of its reading) to its "
        "acknowledgement, over acknowledged alerts.",
        Kind.PERCENTILE, Term("alert_ack_p50_h", "50th percentile of response hours"),
        Term("acknowledged", "acknowledged alerts"), higher_is_better=False,
    ),
    _share(
        "alerts_ack_within_24h_share", "Alerts answered within 24 h", Section.SAFETY,
        Mast.ORGANISATIONAL, ReAim.IMPLEMENTATION,
        "Alerts acknowledged within 24 h of being raised ÷ all alerts.",
        Term("acknowledged_within_24h", "alerts acknowledged within 24 h"), _ALERTS,
        higher_is_better=True,
    ),
    # -- economic sustainability --
    Indicator(
        "visits_avoided", "Visits avoided", Section.ECONOMIC, Mast.ECONOMIC, ReAim.EFFECTIVENESS,
        "{visits}", "Σ over patients of patient-days ÷ 30 × visits_per_month.",
        Kind.MODEL, Term("visits_avoided", "in-person monitoring visits replaced"),
        higher_is_better=True,
    ),
    Indicator(
        "travel_km_avoided", "Travel avoided", Section.ECONOMIC, Mast.ECONOMIC,
        ReAim.EFFECTIVENESS, "km",
        "Σ over patients of visits avoided × 2 × haversine(municipality, SNAI reference pole) "
        "× road_factor.",
        Kind.MODEL, Term("travel_km_avoided", "km of return journeys not made"),
        higher_is_better=True,
    ),
    Indicator(
        "travel_hours_avoided", "Travel time avoided", Section.ECONOMIC, Mast.ECONOMIC,
        ReAim.EFFECTIVENESS, "h",
        "Σ over patients of visits avoided × 2 × SNAI travel time to the pole ÷ 60.",
        Kind.MODEL, Term("travel_hours_avoided", "hours of return journeys not made"),
        higher_is_better=True,
    ),
    Indicator(
        "co2_kg_avoided", "CO2 avoided", Section.ECONOMIC, Mast.ECONOMIC, ReAim.EFFECTIVENESS,
        "kg", "travel_km_avoided × co2_kg_per_km.",
        Kind.MODEL, Term("co2_kg_avoided", "kg of CO2 not emitted"), higher_is_better=True,
    ),
    Indicator(
        "cost_per_patient_month", "Cost per patient-month", Section.ECONOMIC, Mast.ECONOMIC,
        ReAim.IMPLEMENTATION, "EUR",
        "(Amortised devices + connectivity + staff time on alerts + platform share) ÷ "
        "patient-months.",
        Kind.MODEL, Term("cost_per_patient_month", "€ per patient-month"),
        higher_is_better=False,
    ),
    Indicator(
        "break_even_patients", "Break-even patients", Section.ECONOMIC, Mast.ECONOMIC,
        ReAim.MAINTENANCE, "{patients}",
        "Patients at which avoided costs equal costs, under the configured tariffs.",
        Kind.MODEL, Term("break_even_patients", "patients at break-even"),
        higher_is_better=False,
    ),
    # -- user and public-sector response --
    Indicator(
        "sus_mean", "System Usability Scale", Section.RESPONSE, Mast.PATIENT, ReAim.ADOPTION,
        "{score}",
        "Per response 2.5 × (Σ(odd item − 1) + Σ(5 − even item)), items 1–5; the mean over "
        "responses, with a 95% percentile bootstrap interval (2,000 resamples, seeded).",
        Kind.MEAN, Term("sus_mean", "mean SUS score"), Term("sus_responses", "responses"),
        higher_is_better=True,
    ),
    Indicator(
        "sus_responses", "SUS responses", Section.RESPONSE, Mast.PATIENT, ReAim.ADOPTION,
        "{responses}", "System Usability Scale responses answered in the period.",
        Kind.COUNT, Term("sus_responses", "responses"),
    ),
    _share(
        "provider_engagement", "Provider engagement", Section.RESPONSE, Mast.ORGANISATIONAL,
        ReAim.ADOPTION, "Share of alerts acknowledged at all.",
        Term("acknowledged", "acknowledged alerts"), _ALERTS, higher_is_better=True,
    ),
)  # fmt: skip

BY_ID: Mapping[str, Indicator] = {indicator.id: indicator for indicator in INDICATORS}


def values_of(components: Mapping[str, object]) -> dict[str, Value]:
    """Every indicator's number for one group, in declaration order."""
    return {indicator.id: indicator.value_of(components) for indicator in INDICATORS}
