"""`ehealthlab demo`: the LAB's data path end to end, on the local stack.

It starts the stack, builds the store and loads the reference data, then runs the API and an
ingest worker and plays one day of the pilot through them, as its users would: CMTo admits a
start-up and a health provider; the start-up registers a blood-pressure cuff; the provider
enrols a patient of Ala di Stura (an inner area) with a care plan; the cuff connects, says it
is online, sends its morning and evening readings — one with a wrong unit, one high enough
to raise an alert — and goes offline. It prints what the LAB made of it: readings stored,
the rejection and its reason, the alert, and the conformance report. Later issues grow it
into the full pilot (simulated population, FHIR, evaluation, dashboards).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from ehealthlab.api.app import create_app
from ehealthlab.errors import EhealthlabError, StackError
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.gateway.conformance_command import render
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.mqtt import BrokerAddress, MqttConnection, Will
from ehealthlab.settings import Settings
from ehealthlab.stack.local import LocalStack, settings_with_stack
from ehealthlab.stack.ports import free_port
from ehealthlab.store.db import connect
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

DEMO_MUNICIPALITY = "001003"  # Ala di Stura: SNAI E (peripheral), 58 minutes from its pole


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the LAB's data path end to end on the local stack",
        description="Start the local PostgreSQL and Mosquitto (unless EHEALTHLAB_DATABASE_URL "
        "/ EHEALTHLAB_MQTT_HOST point elsewhere), build the store, then run the API and "
        "ingest and play a day of the pilot through them: a start-up's cuff, a provider's "
        "patient, readings good and bad, an alert, the conformance report. The stack stays "
        "up afterwards.",
    )
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    stack = LocalStack(settings)
    stack.up()
    settings = settings_with_stack(settings)
    with connect(settings, autocommit=True) as conn:
        report = migrate(conn, settings.store_form)
        municipalities = load_municipalities(conn)
    _say(f"store: {report.form} form, {municipalities} municipalities")
    for line in stack.status_lines():
        _say("  " + line)
    with _Services(settings) as services:
        _play_a_day(settings, services.api_url)
    executable = Path(sys.executable).with_name("ehealthlab")
    _say(
        f'\nthe stack is still up. Next: eval "$({executable} stack env)", then see the '
        "README's 'Connect a device'; stop it with `ehealthlab stack down`."
    )
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


class _Services:
    """The API (uvicorn on a free loopback port) and one ingest worker, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_url = ""
        self._stop = threading.Event()

    def __enter__(self) -> _Services:
        username = self.settings.mqtt_username
        if username is not None:
            with DynamicSecurity(BrokerAddress.from_settings(self.settings)) as dynsec:
                dynsec.ensure_platform_role(username)
        port = free_port()
        config = uvicorn.Config(
            create_app(self.settings), host="127.0.0.1", port=port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._api = threading.Thread(target=self._server.run, daemon=True)
        self._api.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._api.is_alive():
                raise StackError("the API did not start; see the messages above")
            time.sleep(0.05)
        self.api_url = f"http://127.0.0.1:{port}"
        self._worker = IngestWorker(self.settings, "ingest-demo")
        self._ingest = threading.Thread(target=self._worker.run, args=(self._stop,), daemon=True)
        self._ingest.start()
        if not self._worker.subscribed.wait(20):
            raise StackError("the ingest worker could not subscribe; see the messages above")
        _say(f"api: {self.api_url} (OpenAPI at /docs); ingest: worker {self._worker.name}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._ingest.join(timeout=15)
        self._server.should_exit = True
        self._api.join(timeout=15)


def _api(url: str, token: str, method: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - our own loopback API
        url + "/api/v1" + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise EhealthlabError(f"{method} {path}: {exc.code} {exc.read().decode()[:300]}") from None


def _play_a_day(settings: Settings, url: str) -> None:
    suffix = uuid.uuid4().hex[:6]
    operator = bootstrap_operator(settings)["token"]
    startup = _api(
        url,
        operator,
        "POST",
        "/organisations",
        {"kind": "startup", "name": f"Demo MedTech {suffix}"},
    )["token"]
    provider = _api(
        url,
        operator,
        "POST",
        "/organisations",
        {"kind": "provider", "name": f"ASL TO4 demo {suffix}"},
    )["token"]
    device = _api(
        url,
        startup,
        "POST",
        "/devices",
        {"type": "blood_pressure_monitor", "model": "BP-200", "serial": suffix},
    )
    device_id, mqtt = device["device_id"], device["mqtt"]
    _say(f"\nCMTo admitted a start-up and a provider; the start-up registered cuff {device_id}")
    patient = _api(
        url, provider, "POST", "/patients", {"identifier": f"DEMO-{suffix}", "label": "Signora R."}
    )["id"]
    today = datetime.now(UTC).date()
    _api(
        url,
        provider,
        "POST",
        "/enrolments",
        {
            "patient_id": patient,
            "device_id": device_id,
            "municipality": DEMO_MUNICIPALITY,
            "start": (today - timedelta(days=1)).isoformat(),
            "end": None,
            "care_plan": {"bp_systolic": 2, "bp_diastolic": 2},
        },
    )
    _say(f"the provider enrolled patient {patient} in Ala di Stura, 2 readings a day")

    address = BrokerAddress(
        str(mqtt["host"]), int(mqtt["port"]), mqtt["username"], mqtt["password"]
    )
    topics = mqtt["topics"]
    cuff = MqttConnection(
        address, mqtt["client_id"], will=Will(topics["status"], b'{"state": "offline"}')
    )
    cuff.connect()
    cuff.publish(topics["status"], b'{"state": "online"}', retain=True)
    now = datetime.now(UTC).replace(microsecond=0)
    morning, evening = now - timedelta(hours=10), now - timedelta(minutes=5)
    for msg_id, readings in (
        ("morning", _cuff(1, morning, 138, 86, 71)),
        ("evening", _cuff(4, evening, 186, 104, 88, unit="mmHg")),  # a unit spelt wrong
        ("evening-again", _cuff(7, evening + timedelta(minutes=1), 184, 102, 86)),  # alert
    ):
        payload = {
            "schema": "ehl.readings/1",
            "msg_id": msg_id,
            "sent_at": now.isoformat(),
            "readings": readings,
        }
        cuff.publish(topics["readings"], orjson.dumps(payload))
    cuff.drop()  # the battery dies: the Last Will says offline
    _say("the cuff came online, sent its morning and evening readings and went offline\n")
    time.sleep(2.0)  # ingest commits within tens of milliseconds; presence too

    for m in reversed(_api(url, startup, "GET", f"/devices/{device_id}/messages")):
        _say(
            f"  message {m['msg_id']!r}: {m['readings']} readings, {m['accepted']} stored, "
            f"{m['rejected']} rejected"
        )
    for r in _api(url, startup, "GET", f"/devices/{device_id}/rejects"):
        _say(f"  rejected seq {r['seq']}: {r['reason']}: {r['detail']}")
    for a in _api(url, provider, "GET", "/alerts?status=open"):
        _say(
            f"  alert for the provider: {a['rule']} ({a['reading']['metric']} "
            f"{a['reading']['value']:g}) on {a['day']}"
        )
    state = _api(url, startup, "GET", f"/devices/{device_id}")
    _say(f"  the cuff is {state['status']}, last seen {state['last_seen']}\n")
    report = _api(url, startup, "GET", f"/devices/{device_id}/conformance?minutes=5")
    _say(render(report))


def _cuff(
    seq: int, at: datetime, systolic: float, diastolic: float, pulse: float, *, unit: str = "mm[Hg]"
) -> list[dict[str, object]]:
    """One cuff inflation: systolic, diastolic and pulse sharing their `at`."""
    stamp = at.isoformat()
    return [
        {"seq": seq, "metric": "bp_systolic", "value": systolic, "unit": unit, "at": stamp},
        {"seq": seq + 1, "metric": "bp_diastolic", "value": diastolic, "unit": unit, "at": stamp},
        {"seq": seq + 2, "metric": "heart_rate", "value": pulse, "unit": "/min", "at": stamp},
    ]
