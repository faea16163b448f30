"""The indicators of the registry (evaluation/registry.py) as FHIR R4 Measures. Pure.

One `Measure` per indicator, as WHO SMART Guidelines express an indicator: id the indicator's
id with `_` as `-` (FHIR ids have no underscore), canonical `{base}/Measure/{id}`, version
1.1 (indicators.md v1.1), `description` the definition, `topic` the MAST domain and RE-AIM
dimension, `improvementNotation` from higher_is_better (none when neither is better), and
one `group` whose populations are the indicator's numerator and denominator terms.
`scoring` follows FHIR R4's measure-scoring: a count is a `cohort` (its score is the size of
what it counts), a ratio whose numerator is a part of its denominator (a share, unit 1) a
`proportion`, any other ratio (per 1,000 residents, per patient-week) a `ratio`, and means,
percentiles and the economic model's figures `continuous-variable` (a score computed from
observations of the population).

**One report, many measures.** R4's `MeasureReport.measure` is 1..1, yet a report of the
pilot (one group, one period) carries every indicator. The choice: a composite `Measure`
`pilot-indicators` whose `group`s are the indicators, one each, in the registry's order —
a multi-group measure in the sense of HL7's Quality Measure IGs, each group with its own
scoring (extension `cqm-scoring` of the international CQM IG, since R4 scores at the Measure
level only), its `code` the indicator's and an extension (`{base}/StructureDefinition/
indicator-measure`, valueCanonical) naming the indicator's own Measure; `relatedArtifact`
`composed-of` lists them. It is not a *composite* measure in R4's sense (`type` composite
with `compositeScoring`): no single score is made of the parts. Every MeasureReport refers
to `pilot-indicators`, and each of its groups to the indicator's Measure the same way. The
alternative — one MeasureReport per indicator, group and period — would multiply the reports
by the number of indicators and split what the spec publishes as one report per group and period.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

from ehealthlab.evaluation.registry import INDICATORS, Indicator, Kind, Term
from ehealthlab.fhir.mapping.codes import FHIR_BASE

Json = dict[str, Any]

#: indicators.md's version: the Measures' business version
MEASURE_VERSION = "1.1"
#: when the Measures last changed
MEASURE_DATE = "2026-12-01"
PUBLISHER = "Città Metropolitana di Torino"

COMPOSITE_ID = "pilot-indicators"
MEASURE_BASE = f"{FHIR_BASE}/Measure"
COMPOSITE_URL = f"{MEASURE_BASE}/{COMPOSITE_ID}"
#: the indicators' ids as codes (MeasureReport.group.code, Measure.group.code)
INDICATOR_SYSTEM = f"{FHIR_BASE}/CodeSystem/indicator"
MAST_SYSTEM = f"{FHIR_BASE}/CodeSystem/mast-domain"
REAIM_SYSTEM = f"{FHIR_BASE}/CodeSystem/re-aim"
#: Measure.group / MeasureReport.group extension (valueCanonical): the indicator's Measure
INDICATOR_MEASURE_EXTENSION = f"{FHIR_BASE}/StructureDefinition/indicator-measure"
#: HL7 international CQM IG 1.0.0: a group's scoring, overriding the Measure's
GROUP_SCORING_EXTENSION = "http://hl7.org/fhir/uv/cqm/StructureDefinition/cqm-scoring"
SCORING_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-scoring"
IMPROVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
#: Expression.language of a population's criteria: the evaluation's component it sums
#: (evaluation/compute.py), named as the registry names it
CRITERIA_LANGUAGE = "text/plain"

_SCORING_DISPLAY = {
    "proportion": "Proportion",
    "ratio": "Ratio",
    "continuous-variable": "Continuous Variable",
    "cohort": "Cohort",
}
_IMPROVEMENT = {
    True: ("increase", "Increased score indicates improvement"),
    False: ("decrease", "Decreased score indicates improvement"),
}
_POPULATION_DISPLAY = {
    "initial-population": "Initial Population",
    "numerator": "Numerator",
    "denominator": "Denominator",
    "measure-population": "Measure Population",
    "measure-observation": "Measure Observation",
}


def measure_id(indicator: Indicator) -> str:
    """The FHIR id of an indicator's Measure: its id, `_` written `-`."""
    return indicator.id.replace("_", "-")


def measure_url(indicator: Indicator) -> str:
    return f"{MEASURE_BASE}/{measure_id(indicator)}"


def scoring(indicator: Indicator) -> str:
    """The measure-scoring code of an indicator (module docstring)."""
    if indicator.kind is Kind.COUNT:
        return "cohort"
    if indicator.kind is Kind.RATIO:
        return "proportion" if indicator.unit == "1" else "ratio"
    return "continuous-variable"


def indicator_coding(indicator: Indicator) -> Json:
    return {"system": INDICATOR_SYSTEM, "code": indicator.id, "display": indicator.title}


def improvement_notation(indicator: Indicator) -> Json | None:
    if indicator.higher_is_better is None:
        return None
    code, display = _IMPROVEMENT[indicator.higher_is_better]
    return {"coding": [{"system": IMPROVEMENT_SYSTEM, "code": code, "display": display}]}


def _concept(system: str, code: str, display: str) -> Json:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _scoring_concept(code: str) -> Json:
    return _concept(SCORING_SYSTEM, code, _SCORING_DISPLAY[code])


def _population(code: str, term: Term) -> Json:
    return {
        "code": _concept(POPULATION_SYSTEM, code, _POPULATION_DISPLAY[code]),
        "description": term.text,
        "criteria": {
            "description": term.text,
            "language": CRITERIA_LANGUAGE,
            "expression": term.component,
        },
    }


def _populations(indicator: Indicator) -> list[Json]:
    kind = scoring(indicator)
    numerator, denominator = indicator.numerator, indicator.denominator
    if kind == "cohort":
        return [_population("initial-population", numerator)]
    if kind in ("proportion", "ratio") and denominator is not None:
        return [_population("denominator", denominator), _population("numerator", numerator)]
    populations = []
    if denominator is not None:
        populations.append(_population("measure-population", denominator))
    populations.append(_population("measure-observation", numerator))
    return populations


def _group(indicator: Indicator, *, composite: bool) -> Json:
    group: Json = {}
    if composite:
        group["extension"] = [
            {
                "url": GROUP_SCORING_EXTENSION,
                "valueCodeableConcept": _scoring_concept(scoring(indicator)),
            },
            {"url": INDICATOR_MEASURE_EXTENSION, "valueCanonical": measure_url(indicator)},
        ]
    group["code"] = {"coding": [indicator_coding(indicator)], "text": indicator.title}
    group["description"] = indicator.definition
    group["population"] = _populations(indicator)
    return group


def _guidance(indicator: Indicator) -> str:
    unit = "euro (ISO 4217 EUR)" if indicator.unit == "EUR" else f"`{indicator.unit}` (UCUM)"
    factor = f"; numerator / denominator x {indicator.factor:g}" if indicator.factor != 1.0 else ""
    return (
        f"Score unit: {unit}{factor}. "
        "Computed per group and period by `ehealthlab evaluate` over one population (real "
        "or simulated); an indicator with an empty denominator has no score. Published as "
        "a group of the MeasureReports of Measure pilot-indicators; a group with fewer "
        "patients than the evaluation's min_group_patients shows only that band."
    )


def _common(resource_id: str, url: str, name: str, title: str) -> Json:
    return {
        "resourceType": "Measure",
        "id": resource_id,
        "url": url,
        "version": MEASURE_VERSION,
        "name": name,
        "title": title,
        "status": "active",
        "experimental": False,
        "date": MEASURE_DATE,
        "publisher": PUBLISHER,
    }


@cache
def measure_json(indicator_id: str) -> Json:
    """An indicator's Measure (shared: treat as read-only)."""
    indicator = next(i for i in INDICATORS if i.id == indicator_id)
    resource = _common(
        measure_id(indicator),
        measure_url(indicator),
        "".join(part.capitalize() for part in indicator.id.split("_")),
        indicator.title,
    )
    resource["description"] = indicator.definition
    resource["topic"] = [
        _concept(MAST_SYSTEM, indicator.mast.name.lower(), indicator.mast.value),
        _concept(REAIM_SYSTEM, indicator.reaim.name.lower(), indicator.reaim.value),
    ]
    resource["scoring"] = _scoring_concept(scoring(indicator))
    notation = improvement_notation(indicator)
    if notation is not None:
        resource["improvementNotation"] = notation
    resource["guidance"] = _guidance(indicator)
    resource["group"] = [_group(indicator, composite=False)]
    return resource


@cache
def composite_json() -> Json:
    """The Measure every MeasureReport refers to: one group per indicator."""
    resource = _common(
        COMPOSITE_ID,
        COMPOSITE_URL,
        "PilotIndicators",
        "E-health Territorial LAB pilot indicators",
    )
    resource["description"] = (
        "The indicators of the E-health Territorial LAB pilot of the Metropolitan City of "
        "Turin (indicators.md v1.1), along the domains of MAST and the dimensions of RE-AIM: "
        "one group per indicator, each scored as its own Measure says. Each MeasureReport "
        "of this Measure covers one group of patients (a municipality, SNAI class, area, "
        "start-up, device type, mini-pilot, or all) over one period, for one population."
    )
    resource["relatedArtifact"] = [
        {"type": "composed-of", "display": indicator.title, "resource": measure_url(indicator)}
        for indicator in INDICATORS
    ]
    resource["guidance"] = (
        "Each group carries its scoring (extension cqm-scoring) and names its indicator's "
        f"Measure (extension {INDICATOR_MEASURE_EXTENSION}); the score unit and "
        "improvement notation are the indicator Measure's."
    )
    resource["group"] = [_group(indicator, composite=True) for indicator in INDICATORS]
    return resource


#: every Measure served, by id: the composite first, then the indicators'
MEASURES: Mapping[str, Json] = MappingProxyType(
    {
        COMPOSITE_ID: composite_json(),
        **{measure_id(i): measure_json(i.id) for i in INDICATORS},
    }
)
#: the canonical URL of every Measure served (a MeasureReport search by `measure` takes any)
MEASURE_URLS = frozenset(resource["url"] for resource in MEASURES.values())
