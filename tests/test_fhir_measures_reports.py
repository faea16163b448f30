"""MeasureReports of the pilot's evaluations, pure: a report carries every indicator with its
unit, confidence interval and reasons for absence; a group smaller than the threshold shows
only its size band, so that no figure can point at a few patients; and a report's subject
and the Group ids go both ways.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fhir.resources.R4B.measurereport import MeasureReport
from fhir_measures_fixtures import JAN, at, figures, scores

from ehealthlab.evaluation.registry import INDICATORS
from ehealthlab.fhir.mapping.rows import MeasureReportRecord
from ehealthlab.fhir.measures.definitions import COMPOSITE_URL
from ehealthlab.fhir.measures.groups import parse_group_id, subject_of
from ehealthlab.fhir.measures.reports import (
    CONFIDENCE_INTERVAL_EXTENSION,
    DATA_ABSENT_REASON_EXTENSION,
    measure_report_json,
)
from ehealthlab.fhir.search.measure_reports import report_id


def record(values: dict[str, Any], *, grouping="municipality", key="001003", population="real",
           threshold=5) -> MeasureReportRecord:  # fmt: skip
    subject = subject_of(grouping, key)
    return MeasureReportRecord(
        report_id(population, "2026-01-01", "2026-02-01", subject), population, grouping,
        JAN[0], JAN[1], at(1), key, subject, values, threshold, "Ala di Stura",
    )  # fmt: skip


def test_a_report_carries_every_indicator_with_its_unit_interval_and_absences():
    values = figures(
        patients_enrolled=7,
        adherence={"value": 0.82, "ci95": [0.7, 0.9]},
        sus_mean={"value": 71.5, "ci95": None},
        loss_rate=0.031,
        cost_per_patient_month=42.5,
        retention_share=None,
    )
    report = measure_report_json(record(values))
    parsed = MeasureReport.model_validate(report)
    assert parsed.model_dump(mode="json", exclude_none=True) == report
    assert (report["type"], report["status"], report["measure"]) == (
        "summary",
        "complete",
        COMPOSITE_URL,
    )
    assert report["period"] == {"start": "2026-01-01", "end": "2026-01-31"}
    assert report["subject"] == {"reference": "Location/001003", "display": "Ala di Stura"}
    assert report["meta"]["tag"][0]["code"] == "real" and "security" not in report["meta"]
    got = scores(report)
    assert list(got) == [i.id for i in INDICATORS]
    assert got["patients_enrolled"] == {
        "value": 7,
        "unit": "{patients}",
        "system": "http://unitsofmeasure.org",
        "code": "{patients}",
    }
    adherence = got["adherence"]
    assert adherence["value"] == 0.82 and adherence["unit"] == "1"
    [interval] = adherence["extension"]
    assert interval["url"] == CONFIDENCE_INTERVAL_EXTENSION
    parts = {e["url"]: e for e in interval["extension"]}
    assert parts["confidence"]["valueDecimal"] == 95
    assert (
        parts["interval"]["valueRange"]["low"]["value"],
        parts["interval"]["valueRange"]["high"]["value"],
    ) == (0.7, 0.9)
    assert "extension" not in got["sus_mean"] and got["sus_mean"]["value"] == 71.5
    assert got["cost_per_patient_month"]["system"] == "urn:iso:std:iso:4217"
    for absent in ("retention_share", "alerts"):
        assert got[absent] == {
            "extension": [{"url": DATA_ABSENT_REASON_EXTENSION, "valueCode": "not-applicable"}]
        }
    simulated = measure_report_json(record(values, population="simulated"))
    assert simulated["meta"]["tag"][0]["code"] == "simulated"
    assert simulated["meta"]["security"][0]["code"] == "HTEST"


@pytest.mark.parametrize(
    ("patients", "threshold", "small"),
    [(4, 5, True), (0, 5, True), (5, 5, False), (9, 10, True), (None, 5, True)],
)
def test_a_small_group_shows_only_its_band(patients, threshold, small):
    values = figures(
        patients_enrolled=patients, adherence={"value": 0.5, "ci95": [0.4, 0.6]}, alerts=3
    )
    report = measure_report_json(record(values, threshold=threshold))
    MeasureReport.model_validate(report)
    got = scores(report)
    if not small:
        assert got["alerts"]["value"] == 3
        return
    assert (
        got["patients_enrolled"]["comparator"] == "<"
        and got["patients_enrolled"]["value"] == threshold
    )
    masked = {"extension": [{"url": DATA_ABSENT_REASON_EXTENSION, "valueCode": "masked"}]}
    assert all(score == masked for code, score in got.items() if code != "patients_enrolled")
    assert (
        "0.5" not in orjson.dumps(report).decode()
        and '"value":3' not in orjson.dumps(report).decode()
    )


@pytest.mark.parametrize(
    ("grouping", "key", "subject"),
    [
        ("all", "all", "Group/all"),
        ("municipality", "001003", "Location/001003"),
        ("snai_class", "D", "Group/snai-class-D"),
        ("area", "inner", "Group/area-inner"),
        ("device_type", "blood_pressure_monitor", "Group/device-type-blood-pressure-monitor"),
        (
            "startup",
            "0b7c4a52-33a4-4d4c-9c52-0f3d1e2a9b10",
            "Group/startup-0b7c4a52-33a4-4d4c-9c52-0f3d1e2a9b10",
        ),
        (
            "mini_pilot",
            "0b7c4a52-33a4-4d4c-9c52-0f3d1e2a9b10",
            "Group/mini-pilot-0b7c4a52-33a4-4d4c-9c52-0f3d1e2a9b10",
        ),
    ],
)
def test_subjects_and_group_ids_go_both_ways(grouping, key, subject):
    assert subject_of(grouping, key) == subject
    if subject.startswith("Group/"):
        assert parse_group_id(subject.removeprefix("Group/")) == (grouping, key)


@pytest.mark.parametrize(
    "group_id",
    ["snai-class-G", "area-outer", "device-type-toaster", "startup-x", "mini-pilot-", "everyone"],
)
def test_what_is_no_group(group_id):
    assert parse_group_id(group_id) is None
