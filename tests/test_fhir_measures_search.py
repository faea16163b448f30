"""MeasureReports read and searched through /fhir over a real PostgreSQL: only the current
evaluation of each group and period is reported, small groups stay suppressed there too but
count in `all`, searches by measure, period and subject find what they name, and a report
keeps its id when its evaluation is recomputed; and the same SQL serves both physical forms
of the store.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import psycopg
import pytest
from fhir.resources.R4B.measurereport import MeasureReport
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir_measures_fixtures import (
    JAN,
    at,
    document,
    figures,
    get,
    ok,
    pilot,
    reports,
    scores,
    store,
)

from ehealthlab.fhir.measures.definitions import COMPOSITE_URL
from ehealthlab.fhir.measures.reports import DATA_ABSENT_REASON_EXTENSION, measure_report_json
from ehealthlab.fhir.search.measure_reports import report_id

__all__ = ["pilot"]


EXPECTED_SUBJECTS = {
    ("real", "2026-01-01", "Location/001003"),
    ("real", "2026-01-01", "Location/001272"),
    ("real", "2026-01-01", "Group/snai-class-D"),
    ("real", "2026-01-01", "Group/snai-class-A"),
    ("real", "2026-01-01", "Group/all"),
    ("simulated", "2026-01-01", "Group/area-inner"),
    ("simulated", "2026-01-01", "Group/all"),
    ("real", "2026-02-01", "Group/device-type-blood-pressure-monitor"),
    ("real", "2026-02-01", "Group/all"),
}


def key_of(report: dict[str, Any]) -> tuple[str, str, str]:
    return (
        report["meta"]["tag"][0]["code"],
        report["period"]["start"],
        report["subject"]["reference"],
    )


def test_one_report_per_group_and_period_of_the_current_evaluations(client, pilot):
    found = reports(client, pilot.tokens["p"], {"_count": "2"})
    for report in found:
        MeasureReport.model_validate(report)
    startup, mini = f"Group/startup-{pilot.ids['a']}", f"Group/mini-pilot-{pilot.ids['mini_pilot']}"
    expected = EXPECTED_SUBJECTS | {("real", "2026-01-01", startup), ("real", "2026-01-01", mini)}
    assert sorted(map(key_of, found)) == sorted(expected)  # each once: no second `all`
    by_key = {key_of(r): r for r in found}
    ala = scores(by_key["real", "2026-01-01", "Location/001003"])
    assert ala["adherence"]["value"] == 0.82  # the current evaluation's, not the stale one's
    assert ala["loss_rate"]["value"] == 0.02
    assert by_key["real", "2026-01-01", "Location/001003"]["subject"]["display"] == "Ala di Stura"
    # the real January `all` comes from the latest evaluation of the period (by SNAI class)
    assert scores(by_key["real", "2026-01-01", "Group/all"])["alerts"]["value"] == 12
    assert (
        scores(by_key["simulated", "2026-01-01", "Group/all"])["patients_enrolled"]["value"] == 30
    )
    for report in found:
        population, start, subject = key_of(report)
        end = "2026-02-01" if start == "2026-01-01" else "2026-03-01"
        assert report["id"] == str(report_id(population, start, end, subject))


def test_a_small_group_is_suppressed_but_counts_in_all(client, pilot):
    [torino] = reports(client, pilot.tokens["a"], {"subject": "Location/001272"})
    got = scores(torino)
    assert got["patients_enrolled"]["comparator"] == "<" and got["patients_enrolled"]["value"] == 5
    assert got["adherence"] == {
        "extension": [{"url": DATA_ABSENT_REASON_EXTENSION, "valueCode": "masked"}]
    }
    assert "0.9" not in orjson.dumps(torino).decode()
    everyone = [
        r
        for r in reports(
            client, pilot.tokens["a"], {"subject": "Group/all", "_tag": "real", "period": "2026-01"}
        )
    ]
    assert [scores(r)["patients_enrolled"]["value"] for r in everyone] == [11]


@pytest.mark.parametrize(
    ("params", "subjects"),
    [
        ({"subject": "Location/001003"}, {"Location/001003"}),
        ({"subject:Location": "001003"}, {"Location/001003"}),
        ({"subject": "Group/all", "period": "2026-02"}, {"Group/all"}),
        (
            {"subject": "Group/snai-class-D,Group/snai-class-A"},
            {"Group/snai-class-D", "Group/snai-class-A"},
        ),
        ({"period": "ge2026-02-01"}, {"Group/device-type-blood-pressure-monitor", "Group/all"}),
        ({"period": "sa2026-01-31"}, {"Group/device-type-blood-pressure-monitor", "Group/all"}),
        ({"period": "2026-01-15"}, set()),  # a day does not contain a month
        ({"period": "eb2026-02-01", "_tag": "simulated"}, {"Group/area-inner", "Group/all"}),
        ({"measure": COMPOSITE_URL, "subject": "Group/area-inner"}, {"Group/area-inner"}),
        ({"measure": "Measure/loss-rate", "subject": "Group/area-inner"}, {"Group/area-inner"}),
        ({"measure": "https://example.org/Measure/x"}, set()),
        ({"subject": "Device/x"}, set()),
    ],
)
def test_searches_by_measure_period_and_subject(client, pilot, params, subjects):
    found = reports(client, pilot.tokens["p"], params)
    assert {r["subject"]["reference"] for r in found} == subjects


def test_read_by_id_and_a_recomputed_evaluation_keeps_the_id(client, pilot, settings):
    [before] = reports(client, pilot.tokens["operator"], {"subject": "Location/001003"})
    assert ok(client, pilot.tokens["a"], f"/MeasureReport/{before['id']}") == before
    renewed = figures(patients_enrolled=8, adherence={"value": 0.85, "ci95": [0.75, 0.95]})
    store(
        settings,
        document(
            JAN,
            "municipality",
            {"001003": renewed},
            figures(patients_enrolled=12),
            computed_at=at(5),
        ),
    )
    after = ok(client, pilot.tokens["a"], f"/MeasureReport/{before['id']}")
    assert after["id"] == before["id"] and scores(after)["adherence"]["value"] == 0.85
    assert after["date"] == "2026-03-05T03:00:00Z"
    missing = get(client, pilot.tokens["a"], f"/MeasureReport/{uuid.uuid4()}")
    assert missing.status_code == 404
    OperationOutcome.model_validate(missing.json())


def test_both_store_forms_serve_the_reports_sql(store_url):
    """The SQL of MeasureReports on each physical form of the store, run as the API runs it."""
    from ehealthlab.fhir.access import Tenant  # noqa: PLC0415
    from ehealthlab.fhir.search import tables  # noqa: PLC0415

    groups = {"001003": figures(patients_enrolled=7), "001272": figures(patients_enrolled=3)}
    doc = document(JAN, "municipality", groups, figures(patients_enrolled=10), computed_at=at(1))
    with psycopg.connect(store_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO evaluations (population, grouping, period_from, period_to, document)"
            " VALUES ('real', 'municipality', '2026-01-01', '2026-02-01', %s::jsonb)",
            (orjson.dumps(doc).decode(),),
        )
        statement = tables.search(
            "MeasureReport", (), Tenant("startup", uuid.uuid4()), descending=False, limit=10,
            cursor=None,
        )  # fmt: skip
        page = statement.result(conn.execute(statement.sql, statement.params).fetchall())
    subjects = sorted(r.subject for r in page.records)
    assert subjects == ["Group/all", "Location/001003", "Location/001272"]
    for report in page.records:
        MeasureReport.model_validate(measure_report_json(report))
