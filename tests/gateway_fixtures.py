"""What the tests of the gateway's HTTP API share: the pilot's cast (`cast`: the operator, two
start-ups a and b, two providers p and q) and a `world` of resources they own, made through the
API (`register_device`, `register_patient`, `enrol`) or the admin command (`run_admin`); device
credentials connected to the broker (`admin_broker`, `connect_device`) and a `watch`er that
sees what arrives there; and a problem+json answer checked (`assert_problem`).

The fixtures are imported by the test modules that use them; `bearer`, `run_admin`, `Cast`,
`register_patient` and `enrol` serve the FHIR and simulator tests too.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import time
import uuid
from dataclasses import dataclass, field

import pytest
from paho.mqtt.client import topic_matches_sub

from ehealthlab.cli import OneLineParser
from ehealthlab.gateway import admin
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage
from ehealthlab.settings import Settings

WAIT_S = 30.0  # bounds a failure only: what is awaited comes sooner on any machine
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
