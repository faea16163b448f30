"""Who reads what through the FHIR REST API, over a real uvicorn server, PostgreSQL and
Mosquitto (the world of fhir_world.py): errors are OperationOutcomes, each tenant sees its
own data and another's is not found, cursors cannot cross tenants, and reads of patient
data are audited for the operator."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, urlsplit

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir_world import assert_outcome, ids, of_patient, oracle, walk, world

__all__ = ["world"]


# -- errors -------------------------------------------------------------------------------------


def test_errors_are_operation_outcomes(world):
    body = assert_outcome(world.get("", "/Observation"), 401)
    assert body["issue"][0]["code"] == "login"
    assert "Bearer" in world.get("", "/Observation").headers["www-authenticate"]
    assert_outcome(world.get("p", "/Medication"), 404)
    assert_outcome(world.get("p", "/Observation/not-ours"), 404)
    assert_outcome(world.get("p", "/Observation", {"_format": "xml"}), 406, mentions="_format")
    assert world.ok("p", "/Observation", {"_format": "json", "_count": "1"})["type"] == "searchset"
    assert_outcome(
        world.http.delete(
            world.fhir + f"/Patient/{world.patients['P1']}",
            headers={"Authorization": f"Bearer {world.tokens['p']}"},
        ),
        405,
    )
    # the rest of the API keeps its problem details
    assert world.http.get(world.url + "/api/v1/devices").headers["content-type"] == (
        "application/problem+json"
    )


# -- tenants ------------------------------------------------------------------------------------


def test_tenants_see_their_own_observations(world):
    a_devices = {world.devices[k] for k in ("bp", "ox", "thermo")}
    b_devices = {world.devices[k] for k in ("bp2", "scale")}
    p_patients = {uuid.UUID(world.patients[k]) for k in ("P1", "P2")}
    for who, visible in (
        ("operator", lambda r: True),
        ("p", lambda r: r.patient_id in p_patients),
        ("q", lambda r: r.patient_id == uuid.UUID(world.patients["Q1"])),
        ("a", lambda r: r.device_id in a_devices),  # unassigned readings included
        ("b", lambda r: r.device_id in b_devices),
    ):
        expected = [e.id for e in oracle(world, visible)]
        pages = walk(world, who, "/Observation", {"_count": "200"})
        assert [i for page in pages for i in ids(page)] == expected, who
        assert pages[0]["total"] == len(expected)
    unassigned = world.ok("a", "/Observation", {"patient:missing": "true"})
    assert unassigned["total"] == 15
    assert world.ok("p", "/Observation", {"patient:missing": "true"})["total"] == 0


def test_another_tenants_data_is_not_found(world):
    p1_observation = of_patient(world, "P1")[0].id
    q1_observation = of_patient(world, "Q1")[0].id
    assert_outcome(world.get("q", f"/Observation/{p1_observation}"), 404)
    assert_outcome(world.get("b", f"/Observation/{p1_observation}"), 404)
    assert world.ok("a", f"/Observation/{p1_observation}")["id"] == p1_observation
    assert_outcome(world.get("p", f"/Observation/{q1_observation}"), 404)
    assert world.ok("q", "/Observation", {"patient": world.patients["P1"]})["total"] == 0
    assert ids(world.ok("q", "/Observation/$lastn", {"patient": world.patients["P1"]})) == []
    assert ids(world.ok("b", "/Observation/$lastn", {"patient": world.patients["P1"]})) == []
    lastn = {"patient": world.patients["P1"], "max": "2"}
    assert ids(world.ok("a", "/Observation/$lastn", lastn)) == ids(
        world.ok("p", "/Observation/$lastn", lastn)
    )  # start-up a's devices are all P1 wears
    assert_outcome(world.get("q", f"/Patient/{world.patients['P1']}"), 404)
    assert world.ok("p", f"/Patient/{world.patients['P1']}")["id"] == world.patients["P1"]
    assert {e["resource"]["id"] for e in world.ok("p", "/Patient")["entry"]} == {
        world.patients["P1"],
        world.patients["P2"],
    }
    # start-ups read no Patient at all: their scopes say so, for every patient alike
    assert_outcome(world.get("a", f"/Patient/{world.patients['P1']}"), 403)
    assert_outcome(world.get("a", "/Patient"), 403)


def test_devices_and_organisations_by_tenant(world):
    def device_ids(who):
        return {e["resource"]["id"] for e in world.ok(who, "/Device").get("entry", [])}

    d = world.devices
    assert device_ids("a") == {d["bp"], d["ox"], d["thermo"]}
    assert device_ids("p") == {d["bp"], d["ox"], d["bp2"]}  # enrolled with its patients
    assert device_ids("q") == {d["scale"]}
    assert_outcome(world.get("p", f"/Device/{d['scale']}"), 404)
    assert world.ok("p", f"/Device/{d['bp2']}")["owner"]["reference"] == (
        f"Organization/{world.organisations['b']}"
    )

    def organisations(who):
        return {e["resource"]["id"] for e in world.ok(who, "/Organization").get("entry", [])}

    o = world.organisations
    assert organisations("p") == {o["p"], o["a"], o["b"]}
    assert organisations("a") == {o["a"], o["p"]}
    assert organisations("operator") == set(o.values())
    asl = world.ok("operator", "/Organization", {"type": "asl"})
    assert (
        ids(asl) == [o["q"]] and asl["entry"][0]["resource"]["identifier"][0]["value"] == "010203"
    )


def test_locations_are_public_reference_data(world):
    torino = world.ok("b", "/Location/001272")
    assert torino["name"] == "Torino"
    assert ids(world.ok("b", "/Location", {"name": "TORI"})) == ["001272"]
    assert ids(world.ok("b", "/Location", {"name:exact": "Torino"})) == ["001272"]
    pages = walk(world, "a", "/Location", {"_count": "100"})
    assert [p["total"] for p in pages] == [312] * 4
    assert len({i for page in pages for i in ids(page)}) == 312


def test_cursors_cannot_cross_tenants_or_be_altered(world):
    params = {"patient": world.patients["P1"], "_count": "5"}
    first = world.ok("p", "/Observation", params)
    next_url = {link["relation"]: link["url"] for link in first["link"]}["next"]
    next_params = dict(parse_qsl(urlsplit(next_url).query))
    assert ids(world.ok("p", "/Observation", next_params))  # the owner pages on
    # another provider replaying it, even with the same criteria
    assert_outcome(world.get("q", "/Observation", next_params), 400, mentions="_cursor")
    assert_outcome(world.get("operator", "/Observation", next_params), 400, mentions="_cursor")
    # another search with the same cursor
    other = {**next_params, "code": "8867-4"}
    assert_outcome(world.get("p", "/Observation", other), 400, mentions="_cursor")
    payload, signature = next_params["_cursor"].split(".")
    tampered = {
        **next_params,
        "_cursor": payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature,
    }
    assert_outcome(world.get("p", "/Observation", tampered), 400, mentions="_cursor")


# -- audit --------------------------------------------------------------------------------------


def test_reads_of_patient_data_are_audited_for_the_operator(world):
    p1 = world.patients["P1"]
    observation = of_patient(world, "P1")[1].id
    world.ok("p", f"/Observation/{observation}")
    world.ok("p", "/Observation", {"patient": p1, "code": "8867-4", "_count": "2"})
    assert_outcome(world.get("q", f"/Observation/{observation}"), 404)
    events = world.ok("operator", "/AuditEvent", {"patient": p1, "_count": "1000"})
    Bundle.model_validate(events)
    resources = [e["resource"] for e in events["entry"]]
    for resource in resources:
        AuditEvent.model_validate(resource)
    read = next(
        r
        for r in resources
        if r["entity"][0].get("what", {}).get("reference") == f"Observation/{observation}"
    )
    assert read["action"] == "R" and read["outcome"] == "0"
    assert read["agent"][0]["who"]["reference"] == f"Organization/{world.organisations['p']}"
    assert {"reference": f"Patient/{p1}"} in [e.get("what") for e in read["entity"]]
    refused = world.ok(
        "operator",
        "/AuditEvent",
        {
            "agent": f"Organization/{world.organisations['q']}",
            "outcome": "4",
            "entity": f"Observation/{observation}",
        },
    )
    assert refused["total"] == 1
    searches = world.ok(
        "operator",
        "/AuditEvent",
        {
            "agent": world.organisations["p"],
            "subtype": "search-type",
            "action": "E",
            "date": "ge2026",
            "_sort": "-date",
            "_count": "1",
        },
    )
    entity = searches["entry"][0]["resource"]["entity"][0]
    assert "code=8867-4" in __import__("base64").b64decode(entity["query"]).decode()
    # only the operator reads the trail
    assert_outcome(world.get("p", "/AuditEvent"), 403)
    assert_outcome(world.get("a", "/AuditEvent"), 403)
    # locations are no patient data: not audited
    before = world.ok("operator", "/AuditEvent", {"_summary": "count"})["total"]
    world.ok("p", "/Location/001272")
    assert world.ok("operator", "/AuditEvent", {"_summary": "count"})["total"] == before
