"""A group of a current evaluation as a MeasureReport (indicators.md, "Output"). Pure.

One MeasureReport per group and period of the current evaluations (the latest by
computed_at of each population, grouping and period; migration 0017): `type` summary,
`status` complete, `measure` the composite `pilot-indicators` (definitions.py), `period` the
evaluation's days (`end` the last day included), `date` when it was computed, `subject` the
municipality's Location or a Group (groups.py), `meta.tag` the population (`real` or
`simulated`, simulated also labelled HTEST), and one `group` per indicator of the registry,
coded with the indicator's id and naming its Measure, with:

- `measureScore`: the value as a Quantity in the indicator's UCUM unit (the euro, which
  UCUM lacks, as ISO 4217 `EUR`, as FHIR's Money does);
- for a mean, its 95% bootstrap interval as HL7's extension `quantity-confidenceInterval`
  (FHIR Extensions Pack: sub-extensions `confidence` 95 and `interval`, a Range): DEQM, the
  CQM IGs and WHO SMART's indicator IGs define no interval for a measure score, and this
  extension is HL7's own for "the range within which, at the given level of confidence,
  the actual value resides", on a Quantity;
- `improvementNotation` of the group (DEQM's `deqm-groupImprovementNotation`), since the
  composite Measure's groups differ;
- no value (an empty denominator: null in the evaluation) as `measureScore` carrying only
  the extension `data-absent-reason` `not-applicable`.

**Small groups** (indicators.md, "Published outputs protect small groups"): when the group's
`patients_enrolled` is below the document's `min_group_patients` (the group `all` included,
should it be that small), patients_enrolled shows only the band — a Quantity with
comparator `<` and the threshold as value (`< 5`) — and every other score is
`data-absent-reason` `masked`. The evaluation's JSON keeps the values; what is published
never does.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from ehealthlab.evaluation.registry import INDICATORS, Indicator
from ehealthlab.fhir.mapping.codes import UCUM_SYSTEM
from ehealthlab.fhir.mapping.rows import MeasureReportRecord
from ehealthlab.fhir.measures.definitions import (
    COMPOSITE_URL,
    INDICATOR_MEASURE_EXTENSION,
    improvement_notation,
    indicator_coding,
    measure_url,
)
from ehealthlab.fhir.questionnaires.sus import population_meta

Json = dict[str, Any]

CONFIDENCE_INTERVAL_EXTENSION = (
    "http://hl7.org/fhir/StructureDefinition/quantity-confidenceInterval"
)
DATA_ABSENT_REASON_EXTENSION = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
GROUP_IMPROVEMENT_EXTENSION = (
    "http://hl7.org/fhir/uv/deqm/StructureDefinition/deqm-groupImprovementNotation"
)
CURRENCY_SYSTEM = "urn:iso:std:iso:4217"
#: the indicator whose band a small group shows
PATIENTS = "patients_enrolled"
#: indicators.md's default threshold, when a document does not say
DEFAULT_MIN_GROUP_PATIENTS = 5


def is_small(figures: dict[str, object], min_group_patients: int) -> bool:
    """Fewer patients than the threshold (a group without a count is small)."""
    patients = figures.get(PATIENTS)
    count = patients if isinstance(patients, int | float) and not isinstance(patients, bool) else 0
    return count < min_group_patients


def measure_report_json(record: MeasureReportRecord) -> Json:
    figures = record.figures if isinstance(record.figures, dict) else {}
    threshold = record.min_group_patients
    small = is_small(figures, threshold)
    subject: Json = {"reference": record.subject}
    if record.label:
        subject["display"] = record.label
    return {
        "resourceType": "MeasureReport",
        "id": str(record.id),
        "meta": population_meta(record.population == "simulated"),
        "status": "complete",
        "type": "summary",
        "measure": COMPOSITE_URL,
        "subject": subject,
        "date": record.computed_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "period": {
            "start": record.period_from.isoformat(),
            "end": (record.period_to - timedelta(days=1)).isoformat(),
        },
        "group": [
            _group(indicator, figures.get(indicator.id), small=small, threshold=threshold)
            for indicator in INDICATORS
        ],
    }


def _group(indicator: Indicator, value: object, *, small: bool, threshold: int) -> Json:
    extensions: list[Json] = [
        {"url": INDICATOR_MEASURE_EXTENSION, "valueCanonical": measure_url(indicator)}
    ]
    notation = improvement_notation(indicator)
    if notation is not None:
        extensions.append({"url": GROUP_IMPROVEMENT_EXTENSION, "valueCodeableConcept": notation})
    group: Json = {
        "extension": extensions,
        "code": {"coding": [indicator_coding(indicator)], "text": indicator.title},
    }
    if small:
        if indicator.id == PATIENTS:
            group["measureScore"] = {**_quantity(threshold, indicator.unit), "comparator": "<"}
        else:
            group["measureScore"] = _absent("masked")
        return group
    group["measureScore"] = _score(indicator, value)
    return group


def _score(indicator: Indicator, value: object) -> Json:
    if isinstance(value, dict):  # a mean: {"value", "ci95"}
        mean = value.get("value")
        if not _number(mean):
            return _absent("not-applicable")
        score = _quantity(mean, indicator.unit)
        interval = value.get("ci95")
        if isinstance(interval, list) and len(interval) == 2 and all(map(_number, interval)):
            score = {"extension": [_interval(interval[0], interval[1], indicator.unit)], **score}
        return score
    if _number(value):
        return _quantity(value, indicator.unit)
    return _absent("not-applicable")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _quantity(value: Any, unit: str) -> Json:
    system = CURRENCY_SYSTEM if unit == "EUR" else UCUM_SYSTEM
    return {"value": value, "unit": unit, "system": system, "code": unit}


def _interval(low: Any, high: Any, unit: str) -> Json:
    return {
        "url": CONFIDENCE_INTERVAL_EXTENSION,
        "extension": [
            {"url": "confidence", "valueDecimal": 95},
            {
                "url": "interval",
                "valueRange": {"low": _quantity(low, unit), "high": _quantity(high, unit)},
            },
        ],
    }


def _absent(reason: str) -> Json:
    return {"extension": [{"url": DATA_ABSENT_REASON_EXTENSION, "valueCode": reason}]}
