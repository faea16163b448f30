"""The pilot's indicators as FHIR: a Measure per indicator and the composite
pilot-indicators (pure, from the registry), MeasureReports of the current evaluations with
small groups suppressed (pure, then read and searched through /fhir over a real PostgreSQL),
and the Groups they are about. Evaluations are inserted as the evaluation core stores them
(migration 0017), built here by `document`; every resource is parsed back with the
fhir.resources R4B models.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import psycopg
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.group import Group
from fhir.resources.R4B.measure import Measure
from fhir.resources.R4B.measurereport import MeasureReport
from fhir.resources.R4B.operationoutcome import OperationOutcome
from gateway_fixtures import bearer

from ehealthlab.evaluation.registry import BY_ID, INDICATORS
from ehealthlab.fhir.mapping.rows import MeasureReportRecord
from ehealthlab.fhir.measures.definitions import (
    COMPOSITE_URL,
    GROUP_SCORING_EXTENSION,
    INDICATOR_MEASURE_EXTENSION,
    MEASURES,
    measure_url,
    scoring,
)
from ehealthlab.fhir.measures.groups import parse_group_id, subject_of
from ehealthlab.fhir.measures.reports import (
    CONFIDENCE_INTERVAL_EXTENSION,
    DATA_ABSENT_REASON_EXTENSION,
    measure_report_json,
)
from ehealthlab.fhir.search.measure_reports import report_id
from ehealthlab.gateway import admin

FHIR_JSON = "application/fhir+json"
JAN = (date(2026, 1, 1), date(2026, 2, 1))
FEB = (date(2026, 2, 1), date(2026, 3, 1))

# -- fixtures: evaluation documents as `ehealthlab evaluate` writes them ------------------------


def figures(**values: Any) -> dict[str, Any]:
    """Every indicator of the registry, null unless given."""
    return {indicator.id: values.get(indicator.id) for indicator in INDICATORS}


def document(
    period: tuple[date, date],
    by: str,
    groups: dict[str, dict[str, Any]],
    everyone: dict[str, Any],
    *,
    population: str = "real",
    computed_at: datetime,
    labels: dict[str, str] | None = None,
    min_group_patients: int = 5,
) -> dict[str, Any]:
    return {
        "period": {"from": period[0].isoformat(), "to": period[1].isoformat()},
        "by": by,
        "population": population,
        "computed_at": computed_at.isoformat(),
        "min_group_patients": min_group_patients,
        "seed": 1,
        "labels": labels or {},
        "groups": groups,
        "all": everyone,
    }


def store(settings, doc: dict[str, Any]) -> None:
    with psycopg.connect(settings.require_database_url()) as conn:
        conn.execute(
            "INSERT INTO evaluations (population, grouping, period_from, period_to, computed_at,"
            " document) VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            (
                doc["population"],
                doc["by"],
                doc["period"]["from"],
                doc["period"]["to"],
                doc["computed_at"],
                orjson.dumps(doc).decode(),
            ),
        )


def at(day: int, hour: int = 3) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


# -- pure: Measures -----------------------------------------------------------------------------


def test_every_measure_validates_and_round_trips():
    assert len(MEASURES) == len(INDICATORS) + 1
    for resource in MEASURES.values():
        parsed = Measure.model_validate(resource)
        assert parsed.model_dump(mode="json", exclude_none=True) == resource


@pytest.mark.parametrize(
    ("indicator", "expected"),
    [
        ("patients_enrolled", "cohort"),
        ("alerts", "cohort"),
        ("completeness", "proportion"),
        ("loss_rate", "proportion"),
        ("reach_per_1000", "ratio"),
        ("alerts_per_patient_week", "ratio"),
        ("adherence", "continuous-variable"),
        ("latency_p95_s", "continuous-variable"),
        ("cost_per_patient_month", "continuous-variable"),
    ],
)
def test_scoring_follows_the_kind(indicator, expected):
    assert scoring(BY_ID[indicator]) == expected
    measure = MEASURES[indicator.replace("_", "-")]
    assert measure["scoring"]["coding"][0]["code"] == expected
    codes = [p["code"]["coding"][0]["code"] for p in measure["group"][0]["population"]]
    if expected in ("proportion", "ratio"):
        assert codes == ["denominator", "numerator"]
        assert (
            measure["group"][0]["population"][1]["description"] == BY_ID[indicator].numerator.text
        )


def test_an_indicators_measure_says_what_the_registry_says():
    loss = BY_ID["loss_rate"]
    measure = MEASURES["loss-rate"]
    assert measure["url"] == measure_url(loss) and measure["title"] == loss.title
    assert measure["description"] == loss.definition and measure["name"] == "LossRate"
    assert measure["improvementNotation"]["coding"][0]["code"] == "decrease"
    topics = {
        c["coding"][0]["system"].rsplit("/", 1)[1]: c["coding"][0]["display"]
        for c in measure["topic"]
    }
    assert topics == {"mast-domain": loss.mast.value, "re-aim": loss.reaim.value}
    assert "improvementNotation" not in MEASURES["alerts"]  # neither direction is better


def test_the_composite_has_one_group_per_indicator_each_scored_and_pointing_home():
    composite = MEASURES["pilot-indicators"]
    assert composite["url"] == COMPOSITE_URL and "scoring" not in composite
    assert [g["code"]["coding"][0]["code"] for g in composite["group"]] == [
        i.id for i in INDICATORS
    ]
    for group, indicator in zip(composite["group"], INDICATORS, strict=True):
        extensions = {e["url"]: e for e in group["extension"]}
        assert extensions[INDICATOR_MEASURE_EXTENSION]["valueCanonical"] == measure_url(indicator)
        assert extensions[GROUP_SCORING_EXTENSION]["valueCodeableConcept"]["coding"][0][
            "code"
        ] == scoring(indicator)
    assert [a["resource"] for a in composite["relatedArtifact"]] == [
        measure_url(i) for i in INDICATORS
    ]


# -- pure: MeasureReports -----------------------------------------------------------------------


def record(values: dict[str, Any], *, grouping="municipality", key="001003", population="real",
           threshold=5) -> MeasureReportRecord:  # fmt: skip
    subject = subject_of(grouping, key)
    return MeasureReportRecord(
        report_id(population, "2026-01-01", "2026-02-01", subject), population, grouping,
        JAN[0], JAN[1], at(1), key, subject, values, threshold, "Ala di Stura",
    )  # fmt: skip


def scores(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["code"]["coding"][0]["code"]: g.get("measureScore") for g in report["group"]}


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


# -- through /fhir --------------------------------------------------------------------------------


class Pilot:
    """Tokens, ids and the evaluations stored."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}


@pytest.fixture(scope="module")
def pilot(client, settings) -> Pilot:
    """Evaluations of January (real: by municipality twice, the later current; by SNAI class
    later still, so the real `all` is its; by start-up and by mini-pilot; simulated: by
    area) and of February (real, by device type)."""
    found = Pilot()
    boot = admin.bootstrap_operator(settings)
    found.tokens["operator"] = boot["token"]
    for who, kind in (("a", "startup"), ("p", "provider")):
        answer = client.post(
            "/api/v1/organisations",
            json={"kind": kind, "name": f"{kind} {who} {uuid.uuid4().hex[:6]}"},
            headers=bearer(boot["token"]),
        )
        assert answer.status_code == 201, answer.text
        found.tokens[who], found.ids[who] = answer.json()["token"], answer.json()["id"]
    made = client.post(
        "/api/v1/mini-pilots",
        json={"name": f"valli {uuid.uuid4().hex[:6]}", "startups": [found.ids["a"]],
              "municipalities": ["001003"], "start": "2026-01-01", "end": "2026-06-30"},
        headers=bearer(boot["token"]),
    )  # fmt: skip
    assert made.status_code == 201, made.text
    found.ids["mini_pilot"] = made.json()["id"]
    stale = figures(patients_enrolled=6, adherence={"value": 0.1, "ci95": [0.0, 0.2]})
    store(
        settings,
        document(
            JAN, "municipality", {"001003": stale}, figures(patients_enrolled=99), computed_at=at(1)
        ),
    )
    current = {
        "001003": figures(
            patients_enrolled=7, adherence={"value": 0.82, "ci95": [0.7, 0.9]}, loss_rate=0.02
        ),
        "001272": figures(
            patients_enrolled=4, adherence={"value": 0.9, "ci95": [0.8, 1.0]}, loss_rate=0.5
        ),
    }
    labels = {"001003": "Ala di Stura", "001272": "Torino"}
    store(
        settings,
        document(
            JAN,
            "municipality",
            current,
            figures(patients_enrolled=11),
            computed_at=at(2),
            labels=labels,
        ),
    )
    snai = {"D": figures(patients_enrolled=7), "A": figures(patients_enrolled=4)}
    store(
        settings,
        document(
            JAN, "snai_class", snai, figures(patients_enrolled=11, alerts=12), computed_at=at(3)
        ),
    )
    store(
        settings,
        document(
            JAN,
            "startup",
            {found.ids["a"]: figures(patients_enrolled=11)},
            figures(patients_enrolled=11),
            computed_at=at(1),
        ),
    )
    store(
        settings,
        document(
            JAN,
            "mini_pilot",
            {found.ids["mini_pilot"]: figures(patients_enrolled=7)},
            figures(patients_enrolled=11),
            computed_at=at(1),
        ),
    )
    store(
        settings,
        document(
            JAN,
            "area",
            {"inner": figures(patients_enrolled=30)},
            figures(patients_enrolled=30),
            population="simulated",
            computed_at=at(1),
        ),
    )
    store(
        settings,
        document(
            FEB,
            "device_type",
            {"blood_pressure_monitor": figures(patients_enrolled=8)},
            figures(patients_enrolled=8),
            computed_at=at(4),
        ),
    )
    return found


def get(client, token: str | None, path: str, params=None):
    headers = bearer(token) if token else {}
    return client.get(f"/fhir{path}", params=params, headers=headers)


def ok(client, token: str, path: str, params=None) -> dict[str, Any]:
    answer = get(client, token, path, params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == FHIR_JSON
    return answer.json()


def reports(client, token: str, params=None) -> list[dict[str, Any]]:
    """Every report of a search, walking its pages."""
    bundle = ok(client, token, "/MeasureReport", params)
    Bundle.model_validate(bundle)
    found = [e["resource"] for e in bundle.get("entry", [])]
    while (link := {l["relation"]: l["url"] for l in bundle["link"]}.get("next")) is not None:  # noqa: E741
        bundle = ok(client, token, "/MeasureReport", parse_qsl(urlsplit(link).query))
        found += [e["resource"] for e in bundle.get("entry", [])]
    return found


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


def test_measures_are_read_and_searched_by_every_token(client, pilot):
    for who in ("a", "p", "operator"):
        bundle = ok(client, pilot.tokens[who], "/Measure", {"_count": "10"})
        assert bundle["total"] == len(MEASURES)
    every = []
    bundle = ok(client, pilot.tokens["a"], "/Measure", {"_count": "7"})
    while True:
        every += [e["resource"]["id"] for e in bundle["entry"]]
        link = {l["relation"]: l["url"] for l in bundle["link"]}.get("next")  # noqa: E741
        if link is None:
            break
        bundle = ok(client, pilot.tokens["a"], "/Measure", parse_qsl(urlsplit(link).query))
    assert every == sorted(MEASURES)
    assert (
        ok(client, pilot.tokens["p"], "/Measure/pilot-indicators") == MEASURES["pilot-indicators"]
    )
    found = ok(
        client, pilot.tokens["p"], "/Measure", {"url": f"{measure_url(BY_ID['adherence'])}|1.1"}
    )
    assert [e["resource"]["id"] for e in found["entry"]] == ["adherence"]
    assert get(client, pilot.tokens["p"], "/Measure/loss_rate").status_code == 404
    assert get(client, None, "/Measure").status_code == 401
    assert get(client, None, "/MeasureReport").status_code == 401


def test_every_subject_is_a_resource_served(client, pilot):
    for report in reports(client, pilot.tokens["a"]):
        kind, resource_id = report["subject"]["reference"].split("/")
        resource = ok(client, pilot.tokens["a"], f"/{kind}/{resource_id}")
        assert resource["id"] == resource_id
        if kind == "Group":
            Group.model_validate(resource)
            assert resource["actual"] is False and "member" not in resource
    snai = ok(client, pilot.tokens["p"], "/Group/snai-class-D")
    assert snai["name"].startswith("SNAI class D")
    mini = ok(client, pilot.tokens["p"], f"/Group/mini-pilot-{pilot.ids['mini_pilot']}")
    assert mini["name"].startswith("valli ")
    startup = ok(client, pilot.tokens["p"], f"/Group/startup-{pilot.ids['a']}")
    assert (
        startup["characteristic"][0]["valueReference"]["reference"]
        == f"Organization/{pilot.ids['a']}"
    )
    for unknown in (
        "startup-" + pilot.ids["p"],
        f"mini-pilot-{uuid.uuid4()}",
        "snai-class-Z",
        "nobody",
    ):
        assert get(client, pilot.tokens["p"], f"/Group/{unknown}").status_code == 404


def test_the_capability_statement_declares_measures(client):
    statement = client.get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {p["name"] for p in resources["MeasureReport"]["searchParam"]} == {
        "_id",
        "measure",
        "subject",
        "period",
        "_tag",
    }
    assert {p["name"] for p in resources["Measure"]["searchParam"]} == {"_id", "url"}
    assert [i["code"] for i in resources["Group"]["interaction"]] == ["read"]
    assert [o["name"] for o in resources["Group"]["operation"]] == ["export"]


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
