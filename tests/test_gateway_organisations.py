"""The gateway's HTTP API: organisations and their tokens, against a real PostgreSQL and a real
Mosquitto. The admin command (bootstrap, tokens created and revoked), organisations admitted
once by the operator (simulated ones apart from real ones, a provider's FLS code), each route
admitting only its callers with another organisation's resources looking missing, and token
use recorded."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from gateway_fixtures import (
    PROBLEM,
    assert_problem,
    bearer,
    cast,
    enrol,
    register_device,
    register_patient,
    run_admin,
    world,
)

from ehealthlab.cli import OneLineParser
from ehealthlab.errors import NotFoundError
from ehealthlab.gateway import admin

__all__ = ["cast", "world"]


# -- the admin command ----------------------------------------------------------------------


def test_bootstrap_creates_the_operator_once_and_a_new_token_each_run(client, settings, cast):
    first = run_admin(settings, "admin", "bootstrap")
    second = run_admin(settings, "admin", "bootstrap")
    assert first["organisation_id"] == second["organisation_id"]
    assert first["token"] != second["token"]
    for token in (first["token"], second["token"]):
        me = client.get("/api/v1/me", headers=bearer(token))
        assert me.status_code == 200
        assert me.json()["kind"] == "operator" and me.json()["name"] == "CMTo"


def test_admin_creates_and_revokes_tokens(client, settings, cast):
    created = run_admin(settings, "admin", "token", "create", "--organisation",
                        cast.organisations["a"], "--role", "member")  # fmt: skip
    assert client.get("/api/v1/me", headers=bearer(created["token"])).json()["role"] == "member"
    revoked = run_admin(settings, "admin", "token", "revoke", created["token_id"])
    assert revoked == {"token_id": created["token_id"], "revoked": True}
    assert_problem(client.get("/api/v1/me", headers=bearer(created["token"])), 401)


def test_admin_refuses_unknown_organisations_tokens_and_bad_arguments(settings, capsys):
    for argv in (
        ("admin", "token", "create", "--organisation", str(uuid.uuid4())),
        ("admin", "token", "revoke", str(uuid.uuid4())),
    ):
        with pytest.raises(NotFoundError):
            run_admin(settings, *argv)
    parser = OneLineParser(prog="ehealthlab")
    admin.register(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["admin", "token", "revoke", "not-a-uuid"])
    assert exited.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# -- organisations --------------------------------------------------------------------------


def test_the_operator_admits_organisations_once_by_name(client, cast):
    body = {"kind": "startup", "name": f"Sense {uuid.uuid4().hex[:6]}"}
    created = client.post("/api/v1/organisations", json=body, headers=cast.h("operator"))
    assert created.status_code == 201
    assert set(created.json()) == {"id", "kind", "name", "token_id", "token"}
    again = client.post("/api/v1/organisations", json=body, headers=cast.h("operator"))
    assert_problem(again, 409, detail_has="already exists")
    listed = client.get("/api/v1/organisations", headers=cast.h("operator")).json()
    assert created.json()["id"] in {o["id"] for o in listed}
    assert all("token" not in o for o in listed)


# -- token isolation across every route -----------------------------------------------------

CALLERS = ("nobody", "garbage", "unknown", "revoked", "operator", "a", "b", "p", "q")

# (method, path, body, expected status per caller); a and p own the resources in `world`.
# Mutating routes are only called by those who must be refused.
_NO_TOKEN = {"nobody": 401, "garbage": 401, "unknown": 401, "revoked": 401}
ROUTES = [
    ("POST", "/api/v1/organisations", {"kind": "startup", "name": "x"},
     {"a": 403, "b": 403, "p": 403, "q": 403}),
    ("GET", "/api/v1/organisations", None, {"operator": 200, "a": 403, "p": 403}),
    ("GET", "/api/v1/me", None, {"operator": 200, "a": 200, "b": 200, "p": 200, "q": 200}),
    ("POST", "/api/v1/devices", {"type": "thermometer", "model": "m", "serial": "s"},
     {"operator": 403, "p": 403, "q": 403}),
    ("GET", "/api/v1/devices", None, {"operator": 200, "a": 200, "b": 200, "p": 403}),
    ("GET", "/api/v1/devices/{device_a}", None,
     {"operator": 200, "a": 200, "b": 404, "p": 403, "q": 403}),
    ("POST", "/api/v1/devices/{device_a}/credentials", None,
     {"operator": 403, "b": 404, "p": 403}),
    ("DELETE", "/api/v1/devices/{device_a}", None, {"operator": 403, "b": 404, "p": 403}),
    ("GET", "/api/v1/devices/{device_a}/rejects", None,
     {"operator": 200, "a": 200, "b": 404, "p": 403}),
    ("GET", "/api/v1/devices/{device_a}/messages", None,
     {"operator": 200, "a": 200, "b": 404, "p": 403}),
    ("GET", "/api/v1/devices/{device_a}/conformance", None,
     {"operator": 200, "a": 200, "b": 404, "p": 403, "q": 403}),
    ("POST", "/api/v1/patients", {"identifier": "X1", "label": "x"},
     {"operator": 403, "a": 403}),
    ("GET", "/api/v1/patients", None, {"operator": 403, "a": 403, "p": 200, "q": 200}),
    ("GET", "/api/v1/patients/{patient}", None, {"operator": 403, "a": 403, "p": 200, "q": 404}),
    ("POST", "/api/v1/enrolments",
     {"patient_id": "{patient}", "device_id": "{device_b}", "municipality": "001272",
      "start": "2026-01-01", "care_plan": {"spo2": 1}},
     {"operator": 403, "a": 403, "q": 404}),
    ("GET", "/api/v1/enrolments", None, {"operator": 403, "b": 403, "p": 200, "q": 200}),
    ("GET", "/api/v1/alerts", None, {"operator": 200, "a": 403, "b": 403, "p": 200, "q": 200}),
    ("POST", "/api/v1/alerts/{enrolment}/ack", None, {"operator": 403, "a": 403, "q": 404}),
    ("GET", "/api/v1/enrolments/{enrolment}", None,
     {"operator": 403, "a": 403, "p": 200, "q": 404}),
    ("POST", "/api/v1/enrolments/{enrolment}/end", {"end": "2026-12-31"},
     {"operator": 403, "a": 403, "q": 404}),
]  # fmt: skip


@pytest.fixture(scope="module")
def caller_headers(client, settings, cast):
    revoked = run_admin(settings, "admin", "token", "create", "--organisation",
                        cast.organisations["a"])  # fmt: skip
    run_admin(settings, "admin", "token", "revoke", revoked["token_id"])
    headers = {
        "nobody": {},
        "garbage": {"Authorization": "Bearer not-a-token"},
        "unknown": bearer("ehl_" + "A" * 43),
        "revoked": bearer(revoked["token"]),
    }
    return headers | {who: cast.h(who) for who in ("operator", "a", "b", "p", "q")}


def _fill(value, world):
    if isinstance(value, str):
        return value.format(**world)
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_route_admits_only_its_callers(client, world, caller_headers, route):
    method, path, body, expected = route
    for caller, status in (_NO_TOKEN | expected).items():
        answer = client.request(method, _fill(path, world), json=_fill(body, world),
                                headers=caller_headers[caller])  # fmt: skip
        assert answer.status_code == status, (caller, answer.text)
        if status >= 400:
            assert answer.headers["content-type"] == PROBLEM
        if status == 401:
            assert answer.headers["www-authenticate"].startswith("Bearer")


def test_lists_show_only_the_callers_own(client, cast, world):
    def ids(path, who, key="id"):
        return {item[key] for item in client.get(path, headers=cast.h(who)).json()}

    assert world["device_a"] in ids("/api/v1/devices", "a", "device_id")
    assert world["device_a"] not in ids("/api/v1/devices", "b", "device_id")
    assert {world["device_a"], world["device_b"]} <= ids("/api/v1/devices", "operator",
                                                         "device_id")  # fmt: skip
    assert world["patient"] in ids("/api/v1/patients", "p")
    assert world["patient"] not in ids("/api/v1/patients", "q")
    assert world["enrolment"] in ids("/api/v1/enrolments", "p")
    assert world["enrolment"] not in ids("/api/v1/enrolments", "q")


def test_another_organisations_resource_looks_like_a_missing_one(client, cast, world):
    theirs = client.get(f"/api/v1/devices/{world['device_a']}", headers=cast.h("b")).json()
    missing = client.get("/api/v1/devices/bpm-0000000000000000", headers=cast.h("b")).json()
    assert {k: v for k, v in theirs.items() if k not in ("detail", "instance")} == {
        k: v for k, v in missing.items() if k not in ("detail", "instance")
    }


# -- tokens in use --------------------------------------------------------------------------


def test_token_use_is_recorded(client, cast, settings):
    made = run_admin(settings, "admin", "token", "create", "--organisation",
                     cast.organisations["q"], "--label", "audit")  # fmt: skip

    def last_used():
        with psycopg.connect(settings.require_database_url()) as conn:
            return conn.execute("SELECT last_used_at FROM api_tokens WHERE id = %s",
                                (made["token_id"],)).fetchone()[0]  # fmt: skip

    assert last_used() is None
    client.get("/api/v1/me", headers=bearer(made["token"]))
    first = last_used()
    client.get("/api/v1/me", headers=bearer(made["token"]))
    assert first is not None and last_used() == first  # written at most once a minute


# -- simulated organisations, and a provider's FLS code -------------------------------------


def test_only_the_operator_admits_simulators_and_their_data_never_mix_with_real_ones(client, cast):
    # a start-up cannot declare its own device simulated (it could then state receive times)
    body = {"type": "thermometer", "model": "T", "serial": "x", "simulated": True}
    assert_problem(client.post("/api/v1/devices", headers=cast.h("a"), json=body), 422)
    tokens = {}
    for kind in ("startup", "provider"):
        made = client.post("/api/v1/organisations", headers=cast.h("operator"),
                           json={"kind": kind, "name": f"sim {uuid.uuid4().hex[:6]}",
                                 "simulated": True})  # fmt: skip
        assert made.status_code == 201, made.text
        tokens[kind] = {"Authorization": f"Bearer {made.json()['token']}"}
    listed = client.get("/api/v1/organisations", headers=cast.h("operator")).json()
    assert sum(o["simulated"] for o in listed) == 2
    simulator = client.post("/api/v1/devices", headers=tokens["startup"],
                            json={"type": "blood_pressure_monitor", "model": "S",
                                  "serial": "s1"}).json()["device_id"]  # fmt: skip
    real = register_device(client, cast, "a")["device_id"]
    shown = client.get(f"/api/v1/devices/{simulator}", headers=tokens["startup"]).json()
    assert shown["simulated"] is True
    assert client.get(f"/api/v1/devices/{real}", headers=cast.h("a")).json()["simulated"] is False
    # a real provider's patient never gets a simulator, nor a simulated patient a real device
    real_patient = register_patient(client, cast, "p")
    assert_problem(enrol(client, cast, real_patient, simulator), 422, field_name="body.device_id")
    patient = {"identifier": "x1", "label": "sim"}
    simulated_patient = client.post("/api/v1/patients", headers=tokens["provider"],
                                    json=patient).json()["id"]  # fmt: skip
    body = {"patient_id": simulated_patient, "municipality": "001272", "start": "2026-01-01",
            "care_plan": {"bp_systolic": 2}}  # fmt: skip
    mixed = client.post("/api/v1/enrolments", headers=tokens["provider"],
                        json={**body, "device_id": real})  # fmt: skip
    assert_problem(mixed, 422, field_name="body.device_id")
    same = client.post("/api/v1/enrolments", headers=tokens["provider"],
                       json={**body, "device_id": simulator})  # fmt: skip
    assert same.status_code == 201, same.text


def test_a_provider_may_be_given_its_fls_code_and_nobody_else(client, cast, settings):
    made = client.post("/api/v1/organisations", headers=cast.h("operator"),
                       json={"kind": "provider", "name": f"ASL {uuid.uuid4().hex[:6]}",
                             "fls_code": "010204"})  # fmt: skip
    assert made.status_code == 201, made.text
    with psycopg.connect(settings.require_database_url()) as conn:
        stored = conn.execute("SELECT fls_code FROM organisations WHERE id = %s",
                              (made.json()["id"],)).fetchone()  # fmt: skip
    assert stored == ("010204",)
    for body in ({"kind": "startup", "name": "S", "fls_code": "010204"},
                 {"kind": "provider", "name": "P", "fls_code": "10204"}):  # fmt: skip
        assert_problem(client.post("/api/v1/organisations", headers=cast.h("operator"),
                                   json=body), 422)  # fmt: skip
