"""The gateway's HTTP API against a real PostgreSQL and a real Mosquitto (dynamic security).

One application per module over a fresh copy of the migrated template; the scenario is the
pilot's: the operator bootstraps, admits two start-ups and two providers, start-ups register
devices whose credentials really work in the broker, providers enrol patients. Refusals by
the broker are checked from outside with a subscriber that must see nothing arrive.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from api_fixtures import API_PATIENT_KEY
from paho.mqtt.client import topic_matches_sub
from pydantic import SecretStr

from ehealthlab.api import commands as api_commands
from ehealthlab.cli import OneLineParser
from ehealthlab.contract.topics import feedback_topic, readings_topic, status_topic
from ehealthlab.errors import (
    AuthenticationError,
    EhealthlabError,
    NotFoundError,
    PermissionDeniedError,
)
from ehealthlab.gateway import admin
from ehealthlab.gateway.pseudonyms import patient_pseudonym
from ehealthlab.mqtt import BrokerAddress, MqttConnection, MqttError, ReceivedMessage, Will
from ehealthlab.settings import Settings
from ehealthlab.store.readings import ReadingRow, ReadingWriter
from ehealthlab.store.rejections import RejectedRow, write_rejections

WAIT_S = 30.0  # bounds a failure only: what is awaited comes sooner on any machine
PATIENT_KEY = API_PATIENT_KEY  # the shared `settings` fixture's
PROBLEM = "application/problem+json"


# -- the application and the pilot's cast --------------------------------------------------
# database_url, settings and client are conftest's (tests/api_fixtures.py)


@pytest.fixture(scope="module")
def admin_broker(mosquitto_broker) -> BrokerAddress:
    b = mosquitto_broker
    return BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)


def run_admin(settings: Settings, *argv: str) -> dict:
    """`ehealthlab admin ...` through the parser the admin module registers."""
    parser = OneLineParser(prog="ehealthlab")
    admin.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.handler(args, settings) == 0
    return json.loads(out.getvalue())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Cast:
    operator: str
    tokens: dict[str, str] = field(default_factory=dict)  # who -> token
    organisations: dict[str, str] = field(default_factory=dict)  # who -> organisation id

    def h(self, who: str) -> dict[str, str]:
        return bearer(self.operator if who == "operator" else self.tokens[who])


@pytest.fixture(scope="module")
def cast(client, settings) -> Cast:
    """Operator, two start-ups (a, b) and two providers (p, q)."""
    boot = run_admin(settings, "admin", "bootstrap")
    cast = Cast(operator=boot["token"])
    for who, kind in (("a", "startup"), ("b", "startup"), ("p", "provider"), ("q", "provider")):
        answer = client.post(
            "/api/v1/organisations",
            json={"kind": kind, "name": f"{kind} {who} {uuid.uuid4().hex[:6]}"},
            headers=bearer(cast.operator),
        )
        assert answer.status_code == 201, answer.text
        cast.tokens[who] = answer.json()["token"]
        cast.organisations[who] = answer.json()["id"]
    return cast


def register_device(client, cast, who="a", device_type="blood_pressure_monitor", **extra):
    body = {"type": device_type, "model": "BP-200", "serial": uuid.uuid4().hex[:10], **extra}
    answer = client.post("/api/v1/devices", json=body, headers=cast.h(who))
    assert answer.status_code == 201, answer.text
    return answer.json()


def register_patient(client, cast, who="p", identifier=None) -> str:
    body = {"identifier": identifier or uuid.uuid4().hex, "label": "patient"}
    answer = client.post("/api/v1/patients", json=body, headers=cast.h(who))
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def enrol(client, cast, patient_id, device_id, who="p", **overrides):
    body = {
        "patient_id": patient_id,
        "device_id": device_id,
        "municipality": "001272",
        "start": "2026-01-01",
        "end": None,
        "care_plan": {"bp_systolic": 2},
        **overrides,
    }
    return client.post("/api/v1/enrolments", json=body, headers=cast.h(who))


@pytest.fixture(scope="module")
def world(client, cast):
    """Resources owned by a (a device), b (a device) and p (a patient, an enrolment)."""
    device_a = register_device(client, cast, "a")["device_id"]
    device_b = register_device(client, cast, "b")["device_id"]
    device_p = register_device(client, cast, "a")["device_id"]
    patient = register_patient(client, cast, "p")
    answer = enrol(client, cast, patient, device_p)
    assert answer.status_code == 201, answer.text
    return {"device_a": device_a, "device_b": device_b, "device_p": device_p,
            "patient": patient, "enrolment": answer.json()["id"]}  # fmt: skip


def connect_device(admin_broker: BrokerAddress, mqtt: dict, **kwargs) -> MqttConnection:
    address = admin_broker.as_user(mqtt["username"], mqtt["password"])
    return MqttConnection(address, mqtt["client_id"], **kwargs).connect()


class Watcher:
    """A subscriber with the platform's rights, collecting what arrives.

    `nothing_arrives` needs no quiet period: the watcher sends itself a marker on
    `marker_topic` (a feedback topic, where the platform may publish) and checks that the
    marker is the first thing to arrive. Mosquitto handles messages one at a time and queues
    them for a client in that order, so whatever it let through before (every refused publish
    was answered before) would arrive ahead of the marker.
    """

    def __init__(self, admin_broker: BrokerAddress, topic_filter: str, marker_topic: str) -> None:
        self.messages: queue.Queue[ReceivedMessage] = queue.Queue()
        self.marker_topic = marker_topic
        self.connection = MqttConnection(
            admin_broker, f"watcher-{uuid.uuid4().hex[:6]}", on_message=self.messages.put
        ).connect()
        self.connection.subscribe(topic_filter)
        if not topic_matches_sub(topic_filter, marker_topic):
            self.connection.subscribe(marker_topic)

    def next(self, timeout: float = WAIT_S) -> ReceivedMessage:
        return self.messages.get(timeout=timeout)

    def nothing_arrives(self) -> bool:
        marker = f"marker-{uuid.uuid4().hex}".encode()
        self.connection.publish(self.marker_topic, marker)
        first = self.next()
        return (first.topic, first.payload) == (self.marker_topic, marker)


@pytest.fixture
def watch(admin_broker):
    watchers: list[Watcher] = []

    def start(topic_filter: str, marker_topic: str) -> Watcher:
        watchers.append(Watcher(admin_broker, topic_filter, marker_topic))
        return watchers[-1]

    yield start
    for w in watchers:
        w.connection.close()


def wait_until(condition, timeout: float = WAIT_S) -> bool:
    """Poll `condition`; the timeout only bounds a failure (a loaded machine is slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def assert_problem(answer, status: int, *, detail_has: str = "", field_name: str = ""):
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert body["status"] == status and body["type"].startswith("urn:ehealthlab:problem:")
    assert body["title"] and body["detail"]
    assert detail_has in body["detail"], body
    if field_name:
        assert field_name in [e["field"] for e in body["errors"]], body
    return body


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


# -- devices: credentials that work in the broker, and only there ---------------------------


def test_registered_devices_publish_on_their_own_topics_only(client, cast, admin_broker, watch):
    one = register_device(client, cast, "a", firmware="1.0")
    other = register_device(client, cast, "b", device_type="pulse_oximeter")
    mqtt = one["mqtt"]
    assert mqtt["username"] == mqtt["client_id"] == one["device_id"]
    assert mqtt["topics"] == {
        "readings": readings_topic(one["device_id"]),
        "status": status_topic(one["device_id"]),
        "feedback": feedback_topic(one["device_id"]),
    }
    assert one["device_id"].startswith("bpm-") and other["device_id"].startswith("oxi-")
    mine = watch(f"ehl/v1/devices/{one['device_id']}/#", feedback_topic(one["device_id"]))
    theirs = watch(f"ehl/v1/devices/{other['device_id']}/#", feedback_topic(other["device_id"]))
    with connect_device(admin_broker, mqtt) as device:
        device.publish(mqtt["topics"]["readings"], b'{"hello": 1}')
        for topic in (readings_topic(other["device_id"]), status_topic(other["device_id"]),
                      mqtt["topics"]["feedback"]):  # fmt: skip
            with pytest.raises(PermissionDeniedError):
                device.publish(topic, b"{}")
        with pytest.raises(PermissionDeniedError):
            device.subscribe(feedback_topic(other["device_id"]))
    arrived = mine.next()
    assert (arrived.topic, arrived.payload) == (mqtt["topics"]["readings"], b'{"hello": 1}')
    assert theirs.nothing_arrives()
    assert mine.nothing_arrives()


def test_revoking_drops_the_connection_and_refuses_reconnection(client, cast, admin_broker, watch):
    registered = register_device(client, cast, "a")
    device_id, mqtt = registered["device_id"], registered["mqtt"]
    lost: list[str] = []
    device = connect_device(admin_broker, mqtt, on_connection_lost=lost.append)
    seen = watch(readings_topic(device_id), feedback_topic(device_id))
    answer = client.delete(f"/api/v1/devices/{device_id}", headers=cast.h("a"))
    assert answer.status_code == 204 and answer.content == b""
    # wait for the callback itself: it runs just after is_connected turns false
    assert wait_until(lambda: bool(lost)) and not device.is_connected
    with pytest.raises((MqttError, PermissionDeniedError)):
        device.publish(readings_topic(device_id), b"{}", timeout=1)
    device.drop()
    with pytest.raises(AuthenticationError):
        connect_device(admin_broker, mqtt)
    assert seen.nothing_arrives()
    shown = client.get(f"/api/v1/devices/{device_id}", headers=cast.h("a")).json()
    assert shown["revoked"] is True and shown["revoked_at"]
    # revoking again is harmless; rotating or enrolling a revoked device is a conflict
    assert client.delete(f"/api/v1/devices/{device_id}", headers=cast.h("a")).status_code == 204
    rotate = client.post(f"/api/v1/devices/{device_id}/credentials", headers=cast.h("a"))
    assert_problem(rotate, 409, detail_has="revoked")
    patient = register_patient(client, cast, "p")
    assert_problem(enrol(client, cast, patient, device_id), 409, detail_has="revoked")


def test_rotating_credentials_refuses_the_old_password(client, cast, admin_broker):
    registered = register_device(client, cast, "a")
    device_id, old = registered["device_id"], registered["mqtt"]
    live = connect_device(admin_broker, old)
    rotated = client.post(f"/api/v1/devices/{device_id}/credentials", headers=cast.h("a"))
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["mqtt"]
    assert new["password"] != old["password"] and new["username"] == device_id
    assert wait_until(lambda: not live.is_connected)  # a thief's session ends too
    live.drop()
    with pytest.raises(AuthenticationError):
        connect_device(admin_broker, old)
    connect_device(admin_broker, new).close()


def test_passwords_appear_only_where_they_are_created(client, cast, world):
    for path in ("/api/v1/devices", f"/api/v1/devices/{world['device_a']}"):
        for who in ("a", "operator"):
            answer = client.get(path, headers=cast.h(who))
            assert answer.status_code == 200
            assert "password" not in answer.text and "mqtt" not in answer.text
    listed = client.get("/api/v1/devices", headers=cast.h("a")).json()
    device = next(d for d in listed if d["device_id"] == world["device_a"])
    assert device["status"] == "never_seen" and device["last_seen"] is None
    assert device["type"] == "blood_pressure_monitor" and device["revoked"] is False


def test_a_duplicate_model_and_serial_is_a_conflict_naming_the_device(client, cast):
    body = {"type": "thermometer", "model": "T-1", "serial": uuid.uuid4().hex}
    first = client.post("/api/v1/devices", json=body, headers=cast.h("a"))
    again = client.post("/api/v1/devices", json=body, headers=cast.h("a"))
    problem = assert_problem(again, 409, detail_has="already registered")
    assert problem["device_id"] == first.json()["device_id"]
    # another start-up may have the same model and serial
    assert client.post("/api/v1/devices", json=body, headers=cast.h("b")).status_code == 201


def test_rejects_are_listed_newest_first(client, cast, world, settings):
    device_id = world["device_a"]
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    with psycopg.connect(settings.require_database_url()) as conn:
        write_rejections(conn, [
            RejectedRow(t0, device_id, "malformed_json", "not JSON", b"{", msg_id=None),
            RejectedRow(t0 + timedelta(minutes=1), device_id, "out_of_range",
                        "heart_rate 900 /min outside 20-300", b"{}", msg_id="m-2",
                        item_index=2, seq=1043, metric="heart_rate", at=t0),
        ])  # fmt: skip
    answer = client.get(f"/api/v1/devices/{device_id}/rejects", headers=cast.h("a"))
    assert answer.status_code == 200
    newest, oldest = answer.json()
    assert newest["reason"] == "out_of_range" and newest["seq"] == 1043
    assert newest["msg_id"] == "m-2" and newest["index"] == 2
    assert oldest["reason"] == "malformed_json" and oldest["seq"] is None
    assert {"received_at", "reason", "detail", "seq", "msg_id"} <= set(newest)
    limited = client.get(f"/api/v1/devices/{device_id}/rejects?limit=1", headers=cast.h("a"))
    assert [r["reason"] for r in limited.json()] == ["out_of_range"]
    by_operator = client.get(f"/api/v1/devices/{device_id}/rejects", headers=cast.h("operator"))
    assert len(by_operator.json()) == 2


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


# -- patients -------------------------------------------------------------------------------


def test_the_patient_identifier_is_never_stored_in_clear(client, cast, settings):
    identifier = f"RSSMRA50A01L{uuid.uuid4().hex[:4].upper()}"
    patient = register_patient(client, cast, "p", identifier=identifier)
    with psycopg.connect(settings.require_database_url()) as conn:
        dump = conn.execute(
            "SELECT string_agg(row_to_json(p)::text, ' ') FROM patients p"
        ).fetchone()[0]
        stored = conn.execute(
            "SELECT identifier_hash FROM patients WHERE id = %s", (patient,)
        ).fetchone()[0]
        anywhere = conn.execute(
            "SELECT count(*) FROM enrolments e WHERE e::text ILIKE %s", (f"%{identifier}%",)
        ).fetchone()[0]
    assert identifier.lower() not in dump.lower() and anywhere == 0
    organisation = uuid.UUID(cast.organisations["p"])
    assert stored == patient_pseudonym(PATIENT_KEY.encode(), organisation, identifier)
    # the same person again, typed differently: one patient, its id in the 409
    again = client.post("/api/v1/patients", json={"identifier": f"  {identifier.lower()} ",
                        "label": "again"}, headers=cast.h("p"))  # fmt: skip
    problem = assert_problem(again, 409, detail_has="already registered")
    assert problem["id"] == patient and identifier not in again.text
    # another provider registering the same person gets an unrelated patient
    other = register_patient(client, cast, "q", identifier=identifier)
    assert other != patient


def test_a_bad_identifier_is_not_echoed(client, cast):
    secret = "RSSMRA50A01L219X" * 9  # too long
    answer = client.post("/api/v1/patients", json={"identifier": secret, "label": "x"},
                         headers=cast.h("p"))  # fmt: skip
    assert_problem(answer, 422, field_name="body.identifier")
    assert "RSSMRA" not in answer.text


def test_patients_list_their_enrolments(client, cast, world):
    patients = client.get("/api/v1/patients", headers=cast.h("p")).json()
    mine = next(p for p in patients if p["id"] == world["patient"])
    assert [e["id"] for e in mine["enrolments"]] == [world["enrolment"]]
    assert set(mine) == {"id", "label", "created_at", "enrolments"}
    assert mine["enrolments"][0]["care_plan"] == {"bp_systolic": 2}
    one = client.get(f"/api/v1/patients/{world['patient']}", headers=cast.h("p")).json()
    assert one == mine
    assert_problem(client.get("/api/v1/patients/not-a-uuid", headers=cast.h("p")), 404)


# -- readings received before the enrolment --------------------------------------------------


def _reading(device_id: str, at: datetime, seq: int) -> ReadingRow:
    return ReadingRow(device_id=device_id, metric="bp_systolic", at=at, value=130.0 + seq,
                      measured_at=at, received_at=at + timedelta(seconds=2), seq=seq,
                      msg_id=f"m-{seq}", clock_offset_s=2.0, clock_corrected=False)  # fmt: skip


def test_earlier_readings_are_attributed_when_the_enrolment_is_recorded(client, cast, settings):
    device = register_device(client, cast, "a")["device_id"]
    days = [datetime(2026, 4, d, 9, 0, tzinfo=UTC) for d in (1, 2, 3, 10)]
    with psycopg.connect(settings.require_database_url()) as conn:
        ReadingWriter(conn).write([_reading(device, at, i) for i, at in enumerate(days)])
    patient = register_patient(client, cast, "p")
    made = enrol(client, cast, patient, device, start="2026-04-02", end="2026-04-30")
    assert made.status_code == 201 and made.json()["attributed_readings"] == 3

    def attributed() -> dict[int, str | None]:
        with psycopg.connect(settings.require_database_url()) as conn:
            rows = conn.execute("SELECT seq, patient_id FROM readings WHERE device_id = %s",
                                (device,)).fetchall()  # fmt: skip
        return {seq: str(p) if p else None for seq, p in rows}

    assert attributed() == {0: None, 1: patient, 2: patient, 3: patient}
    # ending it earlier gives the later readings back to "unassigned"
    end = client.post(f"/api/v1/enrolments/{made.json()['id']}/end", json={"end": "2026-04-02"},
                      headers=cast.h("p"))  # fmt: skip
    assert end.status_code == 200
    assert attributed() == {0: None, 1: patient, 2: None, 3: None}


# -- clinical alerts ------------------------------------------------------------------------


def test_alerts_are_raised_listed_and_acknowledged_by_their_provider_only(client, cast, settings):
    device = register_device(client, cast, "a")["device_id"]
    early = datetime(2026, 5, 1, 7, 0, tzinfo=UTC)
    high = [_reading(device, early + timedelta(hours=h), 60 + h) for h in range(3)]  # >= 180
    with psycopg.connect(settings.require_database_url()) as conn:
        ReadingWriter(conn).write(high)  # before the enrolment: unassigned, no alert yet
    patient = register_patient(client, cast, "p")
    made = enrol(client, cast, patient, device, start="2026-05-01")
    assert made.status_code == 201 and made.json()["attributed_readings"] == 3

    def alerts(who: str, status: str = "open") -> list[dict]:
        answer = client.get(f"/api/v1/alerts?status={status}", headers=cast.h(who))
        assert answer.status_code == 200, answer.text
        return [a for a in answer.json() if a["patient_id"] == patient]

    [alert] = alerts("p")  # one per patient, rule and day, raised by the first reading
    assert (alert["rule"], alert["day"], alert["reading"]["value"]) == (
        "bp_systolic_high",
        "2026-05-01",
        190.0,
    )
    assert alert["raised_at"] == "2026-05-01T07:00:02Z"
    assert alerts("q") == []
    assert [a["id"] for a in alerts("operator")] == [alert["id"]]
    assert_problem(client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("q")), 404)
    assert_problem(client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("a")), 403)
    acked = client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("p"))
    assert acked.status_code == 200 and acked.json()["acknowledged_at"] is not None
    again = client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("p")).json()
    assert again["acknowledged_at"] == acked.json()["acknowledged_at"]  # the first one stays
    assert alerts("p") == []
    assert [a["id"] for a in alerts("p", "all")] == [alert["id"]]
    assert_problem(client.get("/api/v1/alerts?status=closed", headers=cast.h("p")), 422)
    assert_problem(client.post("/api/v1/alerts/not-a-uuid/ack", headers=cast.h("p")), 404)


# -- presence -------------------------------------------------------------------------------


def test_a_device_is_shown_online_then_offline_with_last_seen(client, cast, admin_broker,
                                                              settings):  # fmt: skip
    registered = register_device(client, cast, "a")
    device_id, mqtt = registered["device_id"], registered["mqtt"]
    path = f"/api/v1/devices/{device_id}"

    def shown() -> dict:
        return client.get(path, headers=cast.h("a")).json()

    assert shown()["status"] == "never_seen"
    will = Will(mqtt["topics"]["status"], b'{"state": "offline"}')
    device = connect_device(admin_broker, mqtt, will=will)
    device.publish(mqtt["topics"]["status"], b'{"state": "online"}', retain=True)
    assert wait_until(lambda: shown()["status"] == "online"), shown()
    online = shown()
    assert online["last_seen"] is not None and online["status_at"] is not None
    device.drop()  # no DISCONNECT: the broker publishes the Will
    assert wait_until(lambda: shown()["status"] == "offline"), shown()
    offline = shown()
    assert offline["last_seen"] >= online["last_seen"]
    with psycopg.connect(settings.require_database_url()) as conn:
        events = conn.execute(
            "SELECT status, retained FROM device_status_events WHERE device_id = %s"
            " ORDER BY id", (device_id,)).fetchall()  # fmt: skip
    assert events == [("online", False), ("offline", False)]


# -- the broker goes away -------------------------------------------------------------------


def test_a_broker_outage_leaves_no_half_registered_device(client, cast, mosquitto_broker,
                                                          settings):  # fmt: skip
    serial = uuid.uuid4().hex
    body = {"type": "glucometer", "model": "G-1", "serial": serial}
    mosquitto_broker.stop()
    try:
        answer = client.post("/api/v1/devices", json=body, headers=cast.h("a"))
        assert_problem(answer, 503, detail_has="MQTT broker")
        assert answer.headers["retry-after"]
    finally:
        mosquitto_broker.start()
    with psycopg.connect(settings.require_database_url()) as conn:
        assert conn.execute("SELECT count(*) FROM devices WHERE serial = %s",
                            (serial,)).fetchone()[0] == 0  # fmt: skip
    # once the broker is back, the same registration goes through
    assert client.post("/api/v1/devices", json=body, headers=cast.h("a")).status_code == 201


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


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"database_url": SecretStr("postgresql://nobody@127.0.0.1:1/none")}, "PostgreSQL"),
        ({"mqtt_password": SecretStr("wrong")}, "EHEALTHLAB_MQTT_USERNAME"),
        ({"patient_key": None}, "EHEALTHLAB_PATIENT_KEY"),
    ],
)
def test_the_api_command_names_what_is_missing_before_serving(settings, change, says):
    parser = OneLineParser(prog="ehealthlab")
    api_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["api", "--port", "1"])
    with pytest.raises(EhealthlabError, match=says):
        args.handler(args, settings.model_copy(update=change))


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
