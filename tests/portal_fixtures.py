"""What the portal's browser tests share: a pilot cast made through the real API, broker and
ingest, and Debian's chromium driven by Playwright.

The cast: CMTo, two start-ups (Alpha with a blood-pressure cuff that has sent readings — one
rejected for its unit, one high enough to raise an alert — and Beta with a scale) and one
provider whose patient is enrolled with Alpha's cuff.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from ehealthlab.api.client import GatewayClient
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.mqtt import BrokerAddress, MqttConnection, Will
from ehealthlab.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: where screenshots go: EHEALTHLAB_PORTAL_SCREENSHOTS (e.g. docs/), else a temporary folder
SCREENSHOTS_VARIABLE = "EHEALTHLAB_PORTAL_SCREENSHOTS"
WAIT_S = 30.0  # bounds a failure only
#: Ala di Stura, an inner area of the Valli di Lanzo
MUNICIPALITY = "001003"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll `condition` until it is truthy (and return it); fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


@dataclass
class Cast:
    api_url: str
    operator: str
    alpha: str  # start-up tokens
    beta: str
    provider: str
    alpha_id: str  # organisation ids
    beta_id: str
    cuff: str  # Alpha's device, enrolled
    scale: str  # Beta's device
    patient: str
    alert: str  # the open alert's id

    def api(self, token: str) -> GatewayClient:
        return GatewayClient(self.api_url, token)


def _cuff_readings(seq: int, at: datetime, systolic: float, unit: str) -> list[dict[str, Any]]:
    stamp = at.isoformat()
    return [
        {"seq": seq, "metric": "bp_systolic", "value": systolic, "unit": unit, "at": stamp},
        {"seq": seq + 1, "metric": "bp_diastolic", "value": 85, "unit": unit, "at": stamp},
        {"seq": seq + 2, "metric": "heart_rate", "value": 72, "unit": "/min", "at": stamp},
    ]


def make_cast(settings: Settings, api_url: str) -> Cast:
    """The cast, through the API; returns once ingest stored the cuff's three messages and
    raised the alert."""
    operator = bootstrap_operator(settings)["token"]
    cmto = GatewayClient(api_url, operator)
    alpha = cmto.post("/api/v1/organisations", {"kind": "startup", "name": "Alpha Devices"})
    beta = cmto.post("/api/v1/organisations", {"kind": "startup", "name": "Beta Sensors"})
    provider = cmto.post("/api/v1/organisations", {"kind": "provider", "name": "ASL TO4"})
    device = GatewayClient(api_url, alpha["token"]).post(
        "/api/v1/devices", {"type": "blood_pressure_monitor", "model": "BP-200", "serial": "A-1"}
    )
    scale = GatewayClient(api_url, beta["token"]).post(
        "/api/v1/devices", {"type": "weighing_scale", "model": "W-10", "serial": "B-1"}
    )["device_id"]
    care = GatewayClient(api_url, provider["token"])
    patient = care.post(
        "/api/v1/patients", {"identifier": "RSSMRA50A01L219X", "label": "M.R. 1950"}
    )
    today = datetime.now(UTC).date()
    care.post("/api/v1/enrolments", {
        "patient_id": patient["id"], "device_id": device["device_id"],
        "municipality": MUNICIPALITY, "start": (today - timedelta(days=2)).isoformat(),
        "end": None, "care_plan": {"bp_systolic": 2, "bp_diastolic": 2},
    })  # fmt: skip

    mqtt, topics = device["mqtt"], device["mqtt"]["topics"]
    address = BrokerAddress(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"])
    will = Will(topics["status"], b'{"state": "offline"}')
    cuff = MqttConnection(address, mqtt["client_id"], will=will)
    cuff.connect()
    cuff.publish(topics["status"], b'{"state": "online"}', retain=True)
    now = datetime.now(UTC).replace(microsecond=0)
    for msg_id, readings in (
        ("morning", _cuff_readings(1, now - timedelta(hours=3), 132, "mm[Hg]")),
        ("misspelt", _cuff_readings(4, now - timedelta(hours=2), 135, "mmHg")),  # rejected
        ("high", _cuff_readings(7, now - timedelta(minutes=10), 186, "mm[Hg]")),  # an alert
    ):
        body = {"schema": "ehl.readings/1", "msg_id": msg_id, "sent_at": now.isoformat(),
                "readings": readings}  # fmt: skip
        cuff.publish(topics["readings"], orjson.dumps(body))
    cuff.close()

    startup = GatewayClient(api_url, alpha["token"])
    cuff_id = device["device_id"]
    wait_until(lambda: len(startup.get(f"/api/v1/devices/{cuff_id}/messages")) >= 3,
               "the cuff's three messages stored")  # fmt: skip
    # presence records the retained status on its own thread; a clean disconnect leaves it
    wait_until(lambda: startup.get(f"/api/v1/devices/{cuff_id}")["status"] == "online",
               "the cuff's online status recorded")  # fmt: skip
    alerts = wait_until(lambda: care.get("/api/v1/alerts?status=open"), "the alert raised")
    return Cast(
        api_url=api_url, operator=operator, alpha=alpha["token"], beta=beta["token"],
        provider=provider["token"], alpha_id=alpha["id"], beta_id=beta["id"], cuff=cuff_id,
        scale=scale, patient=patient["id"], alert=alerts[0]["id"],
    )  # fmt: skip


def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EHEALTHLAB_PORTAL_SCREENSHOTS when set (e.g. docs/), else a temporary folder."""
    chosen = os.environ.get(SCREENSHOTS_VARIABLE)
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = tmp_path_factory.mktemp("portal-screenshots")
    return path


def launch_chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does)",
                    pytrace=False)  # fmt: skip
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only the browser tests

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
