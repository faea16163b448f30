"""What /fhir serves beside the reports, so that a client can follow them: the Measures, to
every tenant's token and to nobody without one; the Group behind every report's subject (and
no Group that is not one); and a capability statement that declares them.
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, urlsplit

from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.group import Group
from fhir_measures_fixtures import get, ok, pilot, reports

from ehealthlab.evaluation.registry import BY_ID
from ehealthlab.fhir.measures.definitions import MEASURES, measure_url

__all__ = ["pilot"]


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
