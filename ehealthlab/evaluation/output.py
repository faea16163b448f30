"""An Evaluation as the JSON of indicators.md ("Output") and as CSV. Pure.

The JSON and CSV are the operator's: every value of every group, small groups included
(publishing — report, MeasureReports, dashboard — suppresses them, see `suppressed`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ehealthlab.evaluation.compute import Evaluation, GroupResult
from ehealthlab.evaluation.registry import BY_ID, INDICATORS, Mean, Value

CSV_COLUMNS = ("by", "group", "label", "indicator", "value", "ci95_low", "ci95_high", "unit")


def _json_value(value: Value) -> Any:
    return value.as_json() if isinstance(value, Mean) else value


def _values(result: GroupResult) -> dict[str, Any]:
    return {indicator: _json_value(v) for indicator, v in result.values.items()}


def to_document(
    evaluation: Evaluation, *, computed_at: datetime, min_group_patients: int
) -> dict[str, Any]:
    """The JSON of indicators.md, with what a reader needs to reproduce and label it."""
    return {
        "period": {"from": evaluation.period_start, "to": evaluation.period_end},
        "by": evaluation.grouping,
        "population": evaluation.population,
        "computed_at": computed_at.isoformat(),
        "min_group_patients": min_group_patients,
        "seed": evaluation.seed,
        "labels": {key: g.label for key, g in evaluation.groups.items()},
        "groups": {key: _values(g) for key, g in evaluation.groups.items()},
        "all": _values(evaluation.all),
    }


def to_csv(document: Mapping[str, Any]) -> str:
    """Long form, one row per group and indicator (`all` first), for spreadsheets."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    by = document["by"]
    rows = [("all", "All municipalities", document["all"])]
    rows += [(k, document["labels"].get(k, k), v) for k, v in document["groups"].items()]
    for key, label, values in rows:
        for indicator in INDICATORS:
            value = values.get(indicator.id)
            low = high = None
            if isinstance(value, dict):
                interval = value.get("ci95")
                low, high = interval if interval else (None, None)
                value = value.get("value")
            writer.writerow(
                [by if key != "all" else "all", key, label, indicator.id,
                 _cell(value), _cell(low), _cell(high), BY_ID[indicator.id].unit]
            )  # fmt: skip
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def suppressed(values: Mapping[str, Any], min_group_patients: int) -> bool:
    """A published group with fewer patients than `min_group_patients` shows only its band."""
    patients = values.get("patients_enrolled")
    return isinstance(patients, int) and patients < min_group_patients
