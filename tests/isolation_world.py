"""Two disjoint worlds of organisations for the isolation matrix, made through the real API,
broker and ingest.

World 1 is start-up A and provider P, world 2 start-up B and provider Q. In each, the
start-up owns a cuff (enrolled with the provider's patient; it sends a good message, one
with a misspelt unit and one high enough to raise an alert) and a second cuff enrolled with nobody
(its readings stay unassigned); the provider owns the patient, the enrolment, the alert and
a SUS QuestionnaireResponse. Nothing of one world belongs to or is shared with the other, so
any identifier of world 2 in an answer to world 1 is a leak, and the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import orjson

from ehealthlab.fhir.questionnaires.sus import SUS_URL
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.settings import Settings

WAIT_S = 60.0  # bounds a failure only
MUNICIPALITY = "001003"  # Ala di Stura
#: start-up and provider of each world
WORLDS = {1: ("A", "P"), 2: ("B", "Q")}


@dataclass
class Org:
    """One organisation and what it owns."""

    name: str
    kind: str
    world: int
    id: str = ""
    token: str = ""
    token_id: str = ""
    devices: dict[str, str] = field(default_factory=dict)  # role -> device_id
    passwords: dict[str, str] = field(default_factory=dict)  # device_id -> MQTT password
    patient: str = ""
    enrolment: str = ""
    alert: str = ""
    questionnaire_response: str = ""

    def ids(self) -> set[str]:
        """Every identifier this organisation owns (its own id included)."""
        owned = {
            self.id,
            *self.devices.values(),
            self.patient,
            self.enrolment,
            self.alert,
            self.questionnaire_response,
        }
        return {i for i in owned if i}


@dataclass
class World:
    api_url: str
    operator: str
    orgs: dict[str, Org]  # "A", "P", "B", "Q"
    observations: dict[int, set[str]] = field(default_factory=dict)  # world -> Observation ids

    def headers(self, who: str) -> dict[str, str]:
        token = self.operator if who == "operator" else self.orgs[who].token
        return {"Authorization": f"Bearer {token}"}

    def ids_of_world(self, world: int) -> set[str]:
        found = {i for org in self.orgs.values() if org.world == world for i in org.ids()}
        return found | self.observations.get(world, set())

    def foreign_ids(self, who: str) -> set[str]:
        """What `who` must never see: every identifier of the other world."""
        return self.ids_of_world(3 - self.orgs[who].world)


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(0.1)
    return value


def _readings(seq: int, at: datetime, systolic: float, unit: str) -> list[dict[str, Any]]:
    stamp = at.isoformat()
    return [
        {"seq": seq, "metric": "bp_systolic", "value": systolic, "unit": unit, "at": stamp},
        {"seq": seq + 1, "metric": "bp_diastolic", "value": 85, "unit": unit, "at": stamp},
        {"seq": seq + 2, "metric": "heart_rate", "value": 72, "unit": "/min", "at": stamp},
    ]


def _publish(device: dict[str, Any], messages: list[tuple[str, list[dict[str, Any]]]]) -> None:
    mqtt = device["mqtt"]
    address = BrokerAddress(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"])
    connection = MqttConnection(address, mqtt["client_id"])
    connection.connect()
    now = datetime.now(UTC).replace(microsecond=0)
    for msg_id, readings in messages:
        body = {
            "schema": "ehl.readings/1",
            "msg_id": msg_id,
            "sent_at": now.isoformat(),
            "readings": readings,
        }
        connection.publish(mqtt["topics"]["readings"], orjson.dumps(body))
    connection.close()


def make_world(settings: Settings, api_url: str) -> World:
    """Both worlds, through the API; returns once ingest stored every message and raised
    both alerts."""
    http = httpx2.Client(base_url=api_url, timeout=60)

    def call(method: str, path: str, token: str, **kwargs: Any) -> Any:
        answer = http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        assert answer.status_code < 300, (method, path, answer.status_code, answer.text)
        return answer.json()

    operator = bootstrap_operator(settings)["token"]
    orgs: dict[str, Org] = {}
    for world, (startup, provider) in WORLDS.items():
        for name, kind in ((startup, "startup"), (provider, "provider")):
            made = call(
                "POST",
                "/api/v1/organisations",
                operator,
                json={"kind": kind, "name": f"Isolation {kind} {name}"},
            )
            org = Org(name, kind, world, id=made["id"], token=made["token"])
            org.token_id = call("GET", "/api/v1/me", org.token).get("token_id", "")
            orgs[name] = org
    today = datetime.now(UTC).date()
    now = datetime.now(UTC).replace(microsecond=0)
    for startup, provider in WORLDS.values():
        s, p = orgs[startup], orgs[provider]
        cuff = call(
            "POST",
            "/api/v1/devices",
            s.token,
            json={"type": "blood_pressure_monitor", "model": "BP-200", "serial": f"{startup}-1"},
        )
        spare = call(
            "POST",
            "/api/v1/devices",
            s.token,
            json={"type": "blood_pressure_monitor", "model": "BP-100", "serial": f"{startup}-2"},
        )
        s.devices = {"cuff": cuff["device_id"], "spare": spare["device_id"]}
        s.passwords = {
            cuff["device_id"]: cuff["mqtt"]["password"],
            spare["device_id"]: spare["mqtt"]["password"],
        }
        p.patient = call(
            "POST",
            "/api/v1/patients",
            p.token,
            json={"identifier": f"RSSMRA50A01L219{provider}", "label": f"patient of {provider}"},
        )["id"]
        p.enrolment = call(
            "POST",
            "/api/v1/enrolments",
            p.token,
            json={
                "patient_id": p.patient,
                "device_id": cuff["device_id"],
                "municipality": MUNICIPALITY,
                "start": (today - timedelta(days=2)).isoformat(),
                "end": None,
                "care_plan": {"bp_systolic": 2},
            },
        )["id"]
        _publish(
            cuff,
            [
                ("morning", _readings(1, now - timedelta(hours=3), 132, "mm[Hg]")),
                ("misspelt", _readings(4, now - timedelta(hours=2), 135, "mmHg")),
                ("high", _readings(7, now - timedelta(minutes=10), 186, "mm[Hg]")),
            ],
        )
        _publish(spare, [("spare", _readings(1, now - timedelta(hours=1), 120, "mm[Hg]"))])
        response = {
            "resourceType": "QuestionnaireResponse",
            "questionnaire": SUS_URL,
            "status": "completed",
            "subject": {"reference": f"Patient/{p.patient}"},
            "authored": now.isoformat(),
            "item": [{"linkId": str(n), "answer": [{"valueInteger": 3}]} for n in range(1, 11)],
        }
        p.questionnaire_response = _post_fhir(http, p.token, response)
    for startup, provider in WORLDS.values():
        s, p = orgs[startup], orgs[provider]
        for device_id, count in ((s.devices["cuff"], 3), (s.devices["spare"], 1)):
            path = f"/api/v1/devices/{device_id}/messages"
            wait_until(
                lambda path=path, count=count, token=s.token: (
                    len(call("GET", path, token)) >= count
                ),
                f"{device_id}'s messages stored",
            )
        p.alert = wait_until(
            lambda p=p: call("GET", "/api/v1/alerts?status=open", p.token), f"{provider}'s alert"
        )[0]["id"]
    world = World(api_url, operator, orgs)
    for number, (startup, _) in WORLDS.items():
        bundle = call("GET", "/fhir/Observation?_count=200", orgs[startup].token)
        world.observations[number] = {e["resource"]["id"] for e in bundle.get("entry", [])}
        assert world.observations[number], f"world {number} has no Observation"
    http.close()
    return world


def _post_fhir(http: httpx2.Client, token: str, body: dict[str, Any]) -> str:
    answer = http.post(
        "/fhir/QuestionnaireResponse",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])
