"""The FHIR REST API read and searched by plain HTTP and by fhirpy, over a real uvicorn server,
PostgreSQL and Mosquitto (the world of fhir_world.py), each answer checked against the
oracle: the CapabilityStatement, Observation searches (codes, dates at their precision,
totals, paging both ways, posted forms, malformed and generated parameters) and $lastn.
"""

from __future__ import annotations

import uuid

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir_world import (
    LOINC,
    MDC,
    PARAMETER_NAMES,
    SAFE_TEXT,
    SPLIT,
    World,
    assert_outcome,
    ids,
    of_patient,
    oracle,
    utc,
    walk,
    world,
)
from fhirpy import SyncFHIRClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehealthlab.fhir.mapping.ids import observation_identifier
from ehealthlab.fhir.search import observations
from ehealthlab.fhir.search.cursors import micros
from ehealthlab.fhir.search.parameters import PARAMETERS

__all__ = ["world"]

# -- capabilities -------------------------------------------------------------------------------


def sample_values(world: World) -> dict[tuple[str, str], str]:
    """A value for every search parameter the server may declare (the test fails on one
    it declares without a sample here, so this table follows the CapabilityStatement)."""
    p1, p = world.patients["P1"], world.organisations["p"]
    some = oracle(world)[0]
    return {
        ("Observation", "_id"): some.id,
        ("Observation", "patient"): f"Patient/{p1}",
        ("Observation", "subject"): p1,
        ("Observation", "device"): f"Device/{world.devices['bp']}",
        ("Observation", "code"): f"{LOINC}|85354-9",
        ("Observation", "component-code"): "8480-6",
        ("Observation", "combo-code"): "8867-4",
        ("Observation", "category"): "vital-signs",
        ("Observation", "date"): "ge2026-02-10",
        ("Observation", "identifier"): f"urn:ietf:rfc:3986|{observation_identifier(some.id)}",
        ("Patient", "_id"): p1,
        ("Patient", "identifier"): "x|y",
        ("Patient", "organization"): f"Organization/{p}",
        ("Device", "_id"): world.devices["bp"],
        ("Device", "identifier"): world.devices["ox"],
        ("Device", "type"): "blood_pressure_monitor",
        ("Device", "organization"): world.organisations["a"],
        ("Device", "status"): "active",
        ("Location", "_id"): "001272",
        ("Location", "identifier"): "001272",
        ("Location", "name"): "Tor",
        ("Organization", "_id"): p,
        ("Organization", "identifier"): "010203",
        ("Organization", "name"): "provider",
        ("Organization", "type"): "prov",
        ("AuditEvent", "_id"): str(uuid.uuid4()),
        ("AuditEvent", "date"): "ge2026",
        ("AuditEvent", "agent"): f"Organization/{p}",
        ("AuditEvent", "entity"): f"Patient/{p1}",
        ("AuditEvent", "patient"): p1,
        ("AuditEvent", "outcome"): "0",
        ("AuditEvent", "subtype"): "read",
        ("AuditEvent", "action"): "E",
    }


def test_the_capability_statement_declares_exactly_what_answers(world):
    statement = world.ok("", "/metadata")  # no token needed
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1" and statement["kind"] == "instance"
    samples = sample_values(world)
    ids_to_read = {
        "Observation": oracle(world)[0].id,
        "Patient": world.patients["P1"],
        "Device": world.devices["bp"],
        "Location": "001272",
        "Organization": world.organisations["p"],
    }
    declared = set()
    for resource in statement["rest"][0]["resource"]:
        kind = resource["type"]
        if kind not in ids_to_read and kind != "AuditEvent":
            continue  # served by another part of /fhir
        assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
        if kind in ids_to_read:
            assert world.ok("operator", f"/{kind}/{ids_to_read[kind]}")["id"] == ids_to_read[kind]
        for parameter in resource["searchParam"]:
            declared.add((kind, parameter["name"]))
            bundle = world.ok(
                "operator",
                f"/{kind}",
                {parameter["name"]: samples[kind, parameter["name"]]},
                headers={"Prefer": "handling=strict"},
            )
            assert bundle["type"] == "searchset"
        for operation in resource.get("operation", []):
            if (kind, operation["name"]) == ("Observation", "lastn"):
                world.ok("operator", "/Observation/$lastn", {"patient": world.patients["P1"]})
            else:  # bulk export (tests/test_fhir_bulk_export.py walks it through)
                assert (kind, operation["name"]) == ("Patient", "export")
                kicked = world.get("operator", "/Patient/$export",
                                   headers={"Prefer": "respond-async"})  # fmt: skip
                assert kicked.status_code == 202, kicked.text
    assert declared == set(samples)
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    assert [o["name"] for o in rest["operation"]] == ["export"]
    kicked = world.get("operator", "/$export", headers={"Prefer": "respond-async"})
    assert kicked.status_code == 202, kicked.text


# -- searching Observations -------------------------------------------------------------------


def test_a_patients_observations_are_the_oracles_newest_first(world):
    expected = of_patient(world, "P1")
    bundle = world.ok("p", "/Observation", {"patient": world.patients["P1"], "_count": "1000"})
    Bundle.model_validate(bundle)
    assert bundle["total"] == len(expected)
    assert [e["resource"] for e in bundle["entry"]] == [e.resource for e in expected]
    assert {e["search"]["mode"] for e in bundle["entry"]} == {"match"}
    assert bundle["entry"][0]["fullUrl"] == f"{world.fhir}/Observation/{expected[0].id}"
    # each blood-pressure measurement is one panel: lone halves too, never split
    panels = [e for e in expected if e.code == "blood_pressure"]
    assert len(panels) == 81
    absent = [c for e in panels for c in e.resource["component"] if "dataAbsentReason" in c]
    assert len(absent) == 4 + 5  # i % 19 == 7 (4 times) and i % 17 == 5 (5 times), i < 80


@pytest.mark.parametrize("count", [7, 50])
@pytest.mark.parametrize("sort", ["-date", "date"])
def test_paging_walks_every_entry_exactly_once_both_ways(world, count, sort):
    expected = [e.id for e in of_patient(world, "P1", "P2")]
    if sort == "date":
        expected.reverse()
    params = {
        "patient": f"{world.patients['P1']},{world.patients['P2']}",
        "_count": str(count),
        "_sort": sort,
    }
    pages = walk(world, "p", "/Observation", params)
    assert [i for page in pages for i in ids(page)] == expected
    assert {page["total"] for page in pages} == {len(expected)}
    assert all(len(ids(page)) == count for page in pages[:-1])
    assert "previous" not in {link["relation"] for link in pages[0]["link"]}
    back = walk(world, "p", "/Observation", params, relation="previous", start=pages[-1])
    assert [ids(page) for page in reversed(back)] == [ids(page) for page in pages]


@pytest.mark.parametrize(
    ("code", "wanted"),
    [
        ("85354-9", lambda e: e.code == "blood_pressure"),
        (f"{LOINC}|85354-9", lambda e: e.code == "blood_pressure"),
        (f"{LOINC}|8480-6", lambda e: e.code == "blood_pressure"),
        ("8462-4", lambda e: e.code == "blood_pressure"),
        (f"{MDC}|150020", lambda e: e.code == "blood_pressure"),
        ("|85354-9", lambda e: False),
        ("http://snomed.info/sct|85354-9", lambda e: False),
        ("8867-4", lambda e: e.code == "heart_rate"),
        (f"{MDC}|149546", lambda e: e.code == "heart_rate" and e.device_type.startswith("blood")),
        (f"{MDC}|149530", lambda e: e.code == "heart_rate" and e.device_type == "pulse_oximeter"),
        ("59408-5", lambda e: e.code == "spo2"),
        ("8867-4,2708-6", lambda e: e.code in ("heart_rate", "spo2")),
        (f"{LOINC}|", lambda e: True),
        ("9999-9", lambda e: False),
    ],
)
def test_code_forms(world, code, wanted):
    expected = [e.id for e in of_patient(world, "P1") if wanted(e)]
    bundle = world.ok(
        "p", "/Observation", {"patient": world.patients["P1"], "code": code, "_count": "1000"}
    )
    assert ids(bundle) == expected and bundle["total"] == len(expected)


@pytest.mark.parametrize(
    ("params", "wanted"),
    [
        ({"component-code": "8480-6"}, lambda e: e.code == "blood_pressure"),
        ({"component-code": "85354-9"}, lambda e: False),
        ({"combo-code": "85354-9"}, lambda e: e.code == "blood_pressure"),
        ({"category": "vital-signs"}, lambda e: True),
        (
            {"category": "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"},
            lambda e: True,
        ),
        ({"category": "laboratory"}, lambda e: False),
        ([("code", "8867-4"), ("code", "2708-6")], lambda e: False),  # repeated: AND
        ({"device": "placeholder-ox"}, lambda e: e.device_type == "pulse_oximeter"),
        (
            {"date": "ge2026-02-10", "code": "8867-4"},
            lambda e: e.code == "heart_rate" and e.effective >= utc(2026, 2, 9, 23),
        ),
        ({"date": "lt2026-02-10T00:00:00Z"}, lambda e: e.effective < utc(2026, 2, 10)),
        ({"date": "le2026-02-10T00:00:00Z"}, lambda e: e.effective < utc(2026, 2, 10, 0, 0, 1)),
        ({"date": "gt2026-02-10T00:00:00Z"}, lambda e: e.effective >= utc(2026, 2, 10, 0, 0, 1)),
    ],
)
def test_other_observation_criteria(world, params, wanted):
    items = list(params.items()) if isinstance(params, dict) else params
    items = [(k, world.devices["ox"] if v == "placeholder-ox" else v) for k, v in items]
    expected = [e.id for e in of_patient(world, "P1") if wanted(e)]
    bundle = world.ok(
        "p", "/Observation", [("patient", world.patients["P1"]), *items, ("_count", "1000")]
    )
    assert ids(bundle) == expected and bundle["total"] == len(expected)


@pytest.mark.parametrize(
    ("date", "labels"),
    [
        ("2026-03-10", "B2 B3 B4"),
        ("eq2026-03-10", "B2 B3 B4"),
        ("ne2026-03-10", "B1 B5"),
        ("gt2026-03-10", "B5"),
        ("sa2026-03-10", "B5"),
        ("ge2026-03-10", "B2 B3 B4 B5"),
        ("lt2026-03-10", "B1"),
        ("eb2026-03-10", "B1"),
        ("le2026-03-10", "B1 B2 B3 B4"),
        ("2026-03", "B1 B2 B3 B4 B5"),
        ("2026", "B1 B2 B3 B4 B5"),
        ("2026-03-10T12:00Z", "B3"),
        ("2026-03-10T13:00+01:00", "B3"),
        ("2026-03-10T12:00:00Z", "B3"),
        ("2026-03-10T12:00:00.0Z", "B3"),
        ("2026-03-10T12:00:00.5Z", ""),
        ("2026-03-10T00:00", "B2"),  # no zone: Europe/Rome
        ("lt2026-03-10T23:00:00Z", "B1 B2 B3 B4"),
        ("ge2026-03-10T23:00:00Z", "B5"),
        ("2026-03-09,2026-03-11", "B1 B5"),  # OR
    ],
)
def test_date_prefixes_and_precision(world, date, labels):
    # only the boundary readings are oximeter spo2 readings from 9 March on
    items = [("code", "2708-6"), ("date", "ge2026-03-09"), ("date", date)]
    bundle = world.ok("p", "/Observation", [("patient", world.patients["P1"]), *items])
    expected = {world.boundary[label] for label in labels.split()}
    assert set(ids(bundle)) == expected and bundle["total"] == len(expected)


def test_a_panel_matches_when_either_half_does(world):
    panel_id = f"{world.devices['bp']}.blood-pressure.{micros(SPLIT)}"
    [panel] = [e for e in of_patient(world, "P1") if e.id == panel_id]
    assert [c["valueQuantity"]["value"] for c in panel.resource["component"]] == [140, 90]
    for day, found in (("2026-03-20", [panel.resource]), ("2026-03-21", [panel.resource]),
                       ("2026-03-22", [])):  # fmt: skip
        bundle = world.ok("p", "/Observation", {"patient": world.patients["P1"],
                                               "code": "85354-9", "date": day})  # fmt: skip
        assert [e["resource"] for e in bundle.get("entry", [])] == found, day
        assert bundle["total"] == len(found)


def test_totals_are_counted_up_to_a_cap_unless_asked_for(world, monkeypatch):
    # a patient's year of readings costs more to count than its page to answer: searches
    # naming patients are capped like searches over a whole tenant (FHIR makes total optional)
    monkeypatch.setattr(observations, "TOTAL_CAP", 50)
    everything = len(oracle(world))
    broad = world.ok("operator", "/Observation", {"_count": "10"})
    assert "total" not in broad and len(ids(broad)) == 10
    assert world.ok("operator", "/Observation", {"_total": "accurate"})["total"] == everything
    assert world.ok("operator", "/Observation", {"_summary": "count"})["total"] == everything
    p1 = {"patient": world.patients["P1"]}
    assert len(of_patient(world, "P1")) > 50
    assert "total" not in world.ok("operator", "/Observation", p1)
    assert world.ok("operator", "/Observation", {**p1, "_total": "accurate"})["total"] == len(
        of_patient(world, "P1")
    )
    assert world.ok("q", "/Observation", {"_count": "10"})["total"] == 30  # under the cap
    coded = world.ok("p", "/Observation", {**p1, "code": "2708-6", "_count": "10"})
    assert coded["total"] == len([e for e in of_patient(world, "P1") if e.code == "spo2"]) < 50


def test_identifier_id_and_sort_and_counts(world):
    expected = of_patient(world, "P1")
    panel = next(e for e in expected if e.code == "blood_pressure")
    identifier = panel.resource["identifier"][0]
    bundle = world.ok(
        "p", "/Observation", {"identifier": f"{identifier['system']}|{identifier['value']}"}
    )
    assert ids(bundle) == [panel.id]
    both = {panel.id, expected[3].id}
    assert ids(world.ok("p", "/Observation", {"_id": ",".join(sorted(both))})) == [
        e.id for e in expected if e.id in both
    ]
    count = world.ok("p", "/Observation", {"patient": world.patients["P1"], "_summary": "count"})
    assert count["total"] == len(expected) and "entry" not in count
    assert world.ok("p", "/Observation", {"patient": world.patients["P1"], "_count": "0"})[
        "total"
    ] == len(expected)
    no_total = world.ok(
        "p", "/Observation", {"patient": world.patients["P1"], "_total": "none", "_count": "5"}
    )
    assert "total" not in no_total and len(ids(no_total)) == 5


def test_searching_with_a_form_posted_is_searching(world):
    params = {"patient": world.patients["P1"], "code": "8867-4", "_count": "7"}
    got = world.ok("p", "/Observation", params)
    posted = world.http.post(
        world.fhir + "/Observation/_search",
        data=params,
        headers={"Authorization": f"Bearer {world.tokens['p']}"},
    )
    assert posted.status_code == 200, posted.text
    assert posted.json()["entry"] == got["entry"] and posted.json()["total"] == got["total"]
    assert posted.json()["link"] == got["link"]  # paging goes on with GET
    not_a_form = world.http.post(
        world.fhir + "/Observation/_search",
        json=params,
        headers={"Authorization": f"Bearer {world.tokens['p']}"},
    )
    assert_outcome(not_a_form, 400, mentions="x-www-form-urlencoded")


def test_unknown_parameters_lenient_by_default_strict_on_request(world):
    params = {"patient": world.patients["P1"], "colour": "red", "_count": "3"}
    bundle = world.ok("p", "/Observation", params)
    self_link = bundle["link"][0]
    assert self_link["relation"] == "self" and "colour" not in self_link["url"]
    assert_outcome(
        world.get("p", "/Observation", params, {"Prefer": "handling=strict"}),
        400,
        mentions="colour",
    )


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"date": "2026-02-30"}, "date"),
        ({"date": "ap2026-02-01"}, "date"),
        ({"date": "2026-02-01T10:00+25:00"}, "date"),
        ({"_count": "-3"}, "_count"),
        ({"_count": "lots"}, "_count"),
        ({"_sort": "-value"}, "_sort"),
        ({"_cursor": "not-a-cursor"}, "_cursor"),
        ({"code:below": "85354-9"}, "code:below"),
        ({"patient": "Patient/x y"}, "patient"),
    ],
)
def test_malformed_parameters_are_400_operation_outcomes(world, params, parameter):
    body = assert_outcome(world.get("p", "/Observation", params), 400, mentions=parameter)
    assert body["issue"][0]["code"] == "invalid"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    resource_type=st.sampled_from(sorted(PARAMETERS)),
    items=st.lists(st.tuples(st.sampled_from(PARAMETER_NAMES), SAFE_TEXT), min_size=1, max_size=3),
)
def test_generated_parameters_never_fail_the_server(world, resource_type, items):
    answer = world.get("operator", f"/{resource_type}", items)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert_outcome(answer, 400)
    else:
        Bundle.model_validate(answer.json())


# -- $lastn -----------------------------------------------------------------------------------


def test_lastn_gives_the_latest_of_each_code(world):
    expected = of_patient(world, "P1")
    bundle = world.ok("p", "/Observation/$lastn", {"patient": world.patients["P1"], "max": "3"})
    Bundle.model_validate(bundle)
    by_code: dict[str, list[str]] = {}
    for e in expected:
        by_code.setdefault(e.code, []).append(e.id)
    assert ids(bundle) == [i for code in sorted(by_code) for i in by_code[code][:3]]
    vitals = world.ok(
        "p", "/Observation/$lastn", {"patient": world.patients["P1"], "code": "85354-9"}
    )
    assert ids(vitals) == by_code["blood_pressure"][:1]
    assert_outcome(world.get("p", "/Observation/$lastn", {"max": "2"}), 400, mentions="patient")
    assert_outcome(
        world.get("p", "/Observation/$lastn", {"patient": world.patients["P1"], "max": "many"}), 400
    )


# -- a real FHIR client -------------------------------------------------------------------------


def test_fhirpy_reads_searches_and_pages(world):
    client = SyncFHIRClient(world.fhir, authorization=f"Bearer {world.tokens['p']}")
    expected = of_patient(world, "P1")
    found = client.resources("Observation").search(patient=world.patients["P1"]).limit(40)
    assert [o["id"] for o in found.fetch_all()] == [e.id for e in expected]
    assert found.count() == len(expected)
    read = client.reference("Observation", expected[0].id).to_resource()
    assert read["code"] == expected[0].resource["code"]
    march = (
        client.resources("Observation")
        .search(patient=world.patients["P1"], code="2708-6", date__ge="2026-03-10")
        .sort("date")
    )
    assert [o["id"] for o in march.fetch_all()] == [
        world.boundary[b] for b in ("B2", "B3", "B4", "B5")
    ]
    patient = client.reference("Patient", world.patients["P1"]).to_resource()
    assert (
        patient["managingOrganization"]["reference"] == f"Organization/{world.organisations['p']}"
    )
