"""The gateway's HTTP API: its surface. Bad input is a problem+json saying what is wrong (paths,
device registrations, enrolments that overlap or end before they start, query parameters,
unknown routes); the OpenAPI document describes the routes; the `api` command names what is
missing before serving."""

from __future__ import annotations

import json
import uuid

import pytest
from gateway_fixtures import assert_problem, cast, enrol, register_device, register_patient, world
from pydantic import SecretStr

from ehealthlab.api import commands as api_commands
from ehealthlab.cli import OneLineParser
from ehealthlab.errors import EhealthlabError

__all__ = ["cast", "world"]


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["%2F", "a%2Fb", "%2B", "+", "%23", "a%23b", "AB-123", "ab", "-abc", "x" * 65, "..", "%00a0",
     "bpm-1%20", "ab%2B%2B"],
)  # fmt: skip
def test_an_invalid_device_id_in_a_path_is_not_found(client, cast, path):
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/credentials"),
                           ("GET", "/rejects"), ("GET", "/messages"),
                           ("GET", "/conformance")):  # fmt: skip
        answer = client.request(method, f"/api/v1/devices/{path}{suffix}", headers=cast.h("a"))
        assert_problem(answer, 404)


@pytest.mark.parametrize(
    ("body", "field_name", "detail_has"),
    [
        ({"type": "toaster", "model": "m", "serial": "s"}, "body.type", "blood_pressure_monitor"),
        ({"type": "thermometer", "serial": "s"}, "body.model", "required"),
        ({"type": "thermometer", "model": "", "serial": "s"}, "body.model", "at least 1"),
        ({"type": "thermometer", "model": "m" * 101, "serial": "s"}, "body.model", "at most 100"),
        ({"type": "thermometer", "model": "m\n", "serial": "s\x00"}, "body.serial", "pattern"),
        ({"type": "thermometer", "model": "m", "serial": "s", "colour": "red"}, "body.colour",
         "Extra"),
        ({"type": 3, "model": "m", "serial": "s"}, "body.type", "string"),
    ],
)  # fmt: skip
def test_bad_device_registrations_say_what_is_wrong(client, cast, body, field_name, detail_has):
    answer = client.post("/api/v1/devices", json=body, headers=cast.h("a"))
    assert_problem(answer, 422, detail_has=detail_has, field_name=field_name)


def test_unparsable_json_is_a_422(client, cast):
    answer = client.post("/api/v1/devices", content=b"{not json", headers={
        **cast.h("a"), "Content-Type": "application/json"})  # fmt: skip
    assert_problem(answer, 422)


@pytest.mark.parametrize(
    "case",
    [
        ({"municipality": "999999"}, 422, "body.municipality", "'999999'"),
        ({"municipality": "1272"}, 422, "body.municipality", "pattern"),
        ({"care_plan": {"spo2": 2}}, 422, "body.care_plan", "does not measure spo2"),
        ({"care_plan": {"coffee": 2}}, 422, "body.care_plan.coffee[key]", "unknown metric"),
        ({"care_plan": {"bp_systolic": 0}}, 422, "body.care_plan.bp_systolic", ""),
        ({"care_plan": {"bp_systolic": "2"}}, 422, "body.care_plan.bp_systolic", ""),
        ({"care_plan": {"bp_systolic": 1.5}}, 422, "body.care_plan.bp_systolic", ""),
        ({"care_plan": {"bp_systolic": True}}, 422, "body.care_plan.bp_systolic", ""),
        ({"care_plan": {}}, 422, "body.care_plan", ""),
        ({"start": "2026-05-01", "end": "2026-04-30"}, 422, "body", "before start"),
        ({"start": "2026-02-30"}, 422, "body.start", ""),
        ({"device_id": "bpm-0000000000000000"}, 404, "", "no device"),
        ({"device_id": "BPM/+#"}, 422, "body.device_id", "pattern"),
        ({"patient_id": str(uuid.uuid4())}, 404, "", "no patient"),
        ({"patient_id": "nope"}, 422, "body.patient_id", ""),
    ],
)  # fmt: skip
def test_bad_enrolments_say_what_is_wrong(client, cast, world, case):
    overrides, status, field_name, detail_has = case
    body = {
        "patient_id": world["patient"],
        "device_id": register_device(client, cast, "a")["device_id"],
    } | overrides
    answer = enrol(client, cast, **body)
    assert_problem(answer, status, detail_has=detail_has, field_name=field_name)


def test_a_device_serves_one_patient_at_a_time(client, cast):
    device = register_device(client, cast, "b")["device_id"]
    first, second = register_patient(client, cast, "p"), register_patient(client, cast, "q")
    made = enrol(client, cast, first, device, start="2026-01-01", end="2026-01-31")
    assert made.status_code == 201
    overlap = enrol(client, cast, second, device, who="q", start="2026-01-31")
    body = assert_problem(overlap, 409, detail_has="overlapping")
    assert first not in json.dumps(body)  # the other provider's patient stays hidden
    after = enrol(client, cast, second, device, who="q", start="2026-02-01")
    assert after.status_code == 201
    # moving the first one's end into the second is refused too
    moved = client.post(f"/api/v1/enrolments/{made.json()['id']}/end", json={"end": "2026-02-02"},
                        headers=cast.h("p"))  # fmt: skip
    assert_problem(moved, 409, detail_has="overlapping")


def test_ending_an_enrolment(client, cast):
    device = register_device(client, cast, "a")["device_id"]
    patient = register_patient(client, cast, "p")
    made = enrol(client, cast, patient, device, start="2026-03-10").json()
    path = f"/api/v1/enrolments/{made['id']}/end"
    before = client.post(path, json={"end": "2026-03-09"}, headers=cast.h("p"))
    assert_problem(before, 422, detail_has="before the enrolment's start", field_name="body.end")
    assert_problem(client.post(path, json={}, headers=cast.h("p")), 422, field_name="body.end")
    ended = client.post(path, json={"end": "2026-03-10"}, headers=cast.h("p"))
    assert ended.status_code == 200 and ended.json()["end"] == "2026-03-10"
    assert client.get(f"/api/v1/enrolments/{made['id']}", headers=cast.h("p")).json()["end"] == (
        "2026-03-10"
    )
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        assert_problem(client.post(f"/api/v1/enrolments/{bad}/end", json={"end": "2026-04-01"},
                                   headers=cast.h("p")), 404)  # fmt: skip


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=ten"])
def test_bad_query_parameters_are_422(client, cast, world, query):
    answer = client.get(f"/api/v1/devices/{world['device_a']}/rejects?{query}",
                        headers=cast.h("a"))  # fmt: skip
    assert_problem(answer, 422, field_name="query.limit")


def test_unknown_routes_and_methods_are_problems_too(client, cast):
    assert_problem(client.get("/api/v1/nothing-here", headers=cast.h("a")), 404)
    assert_problem(client.put("/api/v1/devices", headers=cast.h("a")), 405)


# -- the API's own surface ------------------------------------------------------------------


def test_the_openapi_document_describes_the_routes(client):
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "ehealthlab API"
    for path in ("/api/v1/organisations", "/api/v1/devices", "/api/v1/devices/{device_id}",
                 "/api/v1/devices/{device_id}/rejects", "/api/v1/patients",
                 "/api/v1/enrolments", "/api/v1/enrolments/{enrolment_id}/end"):  # fmt: skip
        assert path in spec["paths"], path
    register = spec["paths"]["/api/v1/devices"]["post"]
    assert register["summary"] and "201" in register["responses"]
    assert "application/problem+json" in register["responses"]["422"]["content"]
    schemas = spec["components"]["schemas"]
    assert "blood_pressure_monitor" in schemas["DeviceCreate"]["properties"]["type"]["enum"]
    assert schemas["EnrolmentCreate"]["examples"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"database_url": SecretStr("postgresql://nobody@127.0.0.1:1/none")}, "PostgreSQL"),
        ({"mqtt_password": SecretStr("wrong")}, "EHEALTHLAB_MQTT_USERNAME"),
        ({"patient_key": None}, "EHEALTHLAB_PATIENT_KEY"),
        ({"operator_webhook_url": SecretStr("chat.example.org/k")}, "EHEALTHLAB_OPERATOR_WEBHOOK"),
    ],
)
def test_the_api_command_names_what_is_missing_before_serving(settings, change, says):
    parser = OneLineParser(prog="ehealthlab")
    api_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["api", "--port", "1"])
    with pytest.raises(EhealthlabError, match=says):
        args.handler(args, settings.model_copy(update=change))
