"""`ehealthlab demo` runs the whole pilot on its own stack, as a user runs it: a command that
returns, leaving the API (with the portal) and ingest running until `ehealthlab stack down`.

The example pilot is smaller here (`--patients`, `--days`) and its live part short; the
chapters, the outputs and the services are the same as with the defaults.
"""

from __future__ import annotations

import html
import http.cookiejar
import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from ehealthlab import cli
from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.settings import Settings
from ehealthlab.stack.local import LocalStack
from ehealthlab.stack.services import is_running
from ehealthlab.stack.stack_settings import settings_with_stack

pytestmark = pytest.mark.long  # started first when the suite runs in parallel

DASHBOARDS = ("lab/operations.json", "lab/pilot.json", "provider/provider.json",
              "startup/startup.json")  # fmt: skip


def demo_env(state_dir: Path) -> dict[str, str]:
    """The environment of a fresh shell: no EHEALTHLAB_* but the state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHEALTHLAB_")}
    env["EHEALTHLAB_STATE_DIR"] = str(state_dir)
    return env


def ehealthlab(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehealthlab.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def wait_for(done: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.1)


def call(url: str, token: str, path: str, body: object = None) -> Any:
    request = urllib.request.Request(
        url + path,
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def portal_login(login_url: str, token: str) -> str:
    """Log in through the login form as a browser does; the page it lands on."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(login_url, timeout=30) as answer:
        form = answer.read().decode()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf is not None, form
    body = urllib.parse.urlencode({"csrf_token": html.unescape(csrf[1]), "token": token})
    with opener.open(login_url, data=body.encode(), timeout=60) as answer:
        assert answer.status == 200 and "/portal/login" not in answer.url, answer.url
        return str(answer.read().decode())


def test_the_demo_runs_the_pilot_and_leaves_it_running(tmp_path):
    state_dir = tmp_path / "demo-state"
    env = demo_env(state_dir)
    try:
        done = ehealthlab(env, "demo", "--patients", "24", "--days", "8", "--live-minutes",
                          "0.1", timeout=600)  # fmt: skip
        out = done.stdout
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        check_first_chapter(out)
        check_the_pilot(out)
        services = check_the_outputs_and_services(out, state_dir)
        # the command has returned; its services have not
        stack = LocalStack(Settings(state_dir=state_dir))
        running = {s.service: s for s in stack.status()}
        assert running["api"].running and running["ingest"].running
        check_ingest_still_stores(stack, services)
        status = ehealthlab(env, "stack", "status", timeout=60)
        assert re.search(r"^api +running +127\.0\.0\.1:\d+ +\d+ ", status.stdout, re.M)
        assert re.search(r"^ingest +running +- +\d+ ", status.stdout, re.M)
        # a second demo on this stack would add a second cast beside the first: refused
        again = ehealthlab(env, "demo", "--patients", "24", timeout=300)
        assert again.returncode == 2
        assert (
            again.stderr.strip()
            .splitlines()[-1]
            .startswith("ehealthlab: this stack already holds a pilot (")
        ), again.stderr

        down = ehealthlab(env, "stack", "down", timeout=120)
        assert down.returncode == 0, down.stderr
        assert re.search(r"^api +stopped", down.stdout, re.M), down.stdout
        assert re.search(r"^ingest +stopped", down.stdout, re.M), down.stdout
        for recorded in services:
            assert not is_running(recorded)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(services[0].address + "/portal/login", timeout=5)
        assert {s.service for s in stack.status()} == {"postgresql", "mosquitto"}
    finally:
        LocalStack(Settings(state_dir=state_dir)).down(purge=True)


def check_first_chapter(out: str) -> None:
    assert "message 'morning': 3 readings, 3 stored, 0 rejected" in out
    assert "message 'evening': 3 readings, 1 stored, 2 rejected" in out
    assert "unit_mismatch: unit 'mmHg' not accepted for bp_systolic" in out
    assert "alert for the provider: bp_systolic_high (bp_systolic 184)" in out
    assert "the cuff is offline" in out
    assert "FAIL  Units (UCUM)" in out and "PASS  Status and Last Will" in out
    # the simulated week: every SNAI class of its municipalities, late readings where the
    # link went down (Ala di Stura, E), and an Observation read back through FHIR
    week = out[out.index("demo: a week in Torino") : out.index("== Chapter 2")]
    rows = re.findall(
        r"^  ([A-F]) +(\d+) +(\d+) +(\d+) s +(\d+) s +([\d.]+)% +([\d.]+)%$", week, re.MULTILINE
    )
    late = {snai_class: float(share) for snai_class, *_, share, _ in rows}
    assert set(late) == {"A", "D", "E", "F"}, week
    assert late["E"] > 0 and late["A"] == 0
    assert "FHIR: GET /fhir/Observation/$lastn" in week and "(LOINC " in week


def check_the_pilot(out: str) -> None:
    pilot = out[out.index("== Chapter 2") : out.index("== Chapter 3")]
    assert "24 patients" in pilot and "9 municipalities (SNAI A, B, C, D, E, F)" in pilot
    assert "8 days from" in pilot and "3 start-ups" in pilot
    assert len(re.findall(r"CMTo defined the mini-pilot", pilot)) == 2
    assert re.search(r"all \d+ readings in the store", pilot), pilot
    assert "live for 0.1 minutes" in pilot


def check_the_outputs_and_services(out: str, state_dir: Path) -> list[Any]:
    end = out[out.index("== The LAB is running") :]
    login = re.search(r"^portal +(http://127\.0\.0\.1:\d+/portal/login)", end, re.M)
    assert login is not None, end
    url = login[1].removesuffix("/portal/login")
    tokens = dict(re.findall(r"^  (CMTo \(operator\)|provider: .+?|start-up: .+?) +(ehl_\S+)$",
                             end, re.M))  # fmt: skip
    kinds = {name.split(":")[0].split(" ")[0] for name in tokens}
    assert kinds == {"CMTo", "provider", "start-up"}, tokens
    operator = tokens["CMTo (operator)"]
    provider = next(t for n, t in tokens.items() if n.startswith("provider"))
    startup = next(t for n, t in tokens.items() if n.startswith("start-up"))
    # each token logs in to the portal and works against the API
    assert "Organisations" in portal_login(login[1], operator)
    assert "Patients" in portal_login(login[1], provider)
    assert "Devices" in portal_login(login[1], startup)
    organisations = call(url, operator, "/api/v1/organisations")
    assert any(o["simulated"] for o in organisations)
    assert call(url, provider, "/api/v1/patients")
    assert call(url, startup, "/api/v1/devices")
    # the MeasureReports of the published evaluations, labelled simulated
    bundle = call(url, operator, "/fhir/MeasureReport?_count=5")
    assert bundle["total"] > 0
    tags = bundle["entry"][0]["resource"]["meta"]["tag"]
    assert any(t["code"] == "simulated" for t in tags)
    # the pilot report, of the simulated population
    report = Path(re.search(r"^report +(\S+)$", end, re.M)[1])  # type: ignore[index]
    page = report.read_text()
    assert "<title>[SIMULATED DATA] Telemonitoring pilot report" in page
    assert "Mini-pilots" in page
    # the dashboards and their provisioning, the roles' passwords beside them
    folder = Path(re.search(r"^dashboards +(\S+)", end, re.M)[1])  # type: ignore[index]
    for name in DASHBOARDS:
        assert json.loads((folder / "dashboards" / name).read_text())["title"]
    for name in ("datasources", "dashboards"):
        assert (folder / "provisioning" / name / "ehealthlab.yaml").is_file()
    secrets = list((folder / "secrets").iterdir())
    assert len(secrets) == 5  # the lab, the provider, three start-ups
    assert all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in secrets)
    tokens_file = Path(re.search(r"^tokens +(\S+)$", end, re.M)[1])  # type: ignore[index]
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert "ehealthlab stack down" in end
    state = LocalStack(Settings(state_dir=state_dir)).load_state()
    assert state is not None
    assert state.services["api"].address == url
    return [state.services["api"], state.services["ingest"]]


def check_ingest_still_stores(stack: LocalStack, services: list[Any]) -> None:
    """After the demo returned: a new device's reading reaches the store through the
    background ingest worker."""
    url = services[0].address
    tokens = json.loads((stack.state_dir / "demo" / "tokens.json").read_text())
    startup = next(
        t for n, t in tokens.items() if n not in {"CMTo (operator)", "Simulated health provider"}
    )
    device = call(url, startup, "/api/v1/devices",
                  {"type": "thermometer", "model": "T-1", "serial": "after-the-demo"})  # fmt: skip
    mqtt = device["mqtt"]
    address = BrokerAddress(mqtt["host"], int(mqtt["port"]), mqtt["username"], mqtt["password"])
    connection = MqttConnection(address, mqtt["client_id"])
    connection.connect()
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    reading = {"seq": 1, "metric": "body_temperature", "value": 36.6, "unit": "Cel", "at": now}
    message = {"schema": "ehl.readings/1", "msg_id": "after", "sent_at": now, "readings": [reading]}
    connection.publish(mqtt["topics"]["readings"], orjson.dumps(message))
    connection.close()
    database = settings_with_stack(Settings(state_dir=stack.state_dir)).require_database_url()

    def stored() -> bool:
        with psycopg.connect(database) as conn:
            row = conn.execute(
                "SELECT count(*) FROM readings WHERE device_id = %s", (device["device_id"],)
            ).fetchone()
        return row is not None and row[0] == 1

    wait_for(stored, "the reading sent after the demo returned")


@pytest.mark.parametrize(
    "argv",
    [["demo", "--fast"], ["dmeo"], ["demo", "--live-minutes", "soon"]],
)
def test_a_wrong_demo_argument_is_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--live-minutes", "-1"], "--live-minutes"),
        (["demo", "--patients", "0"], "--patients"),
        (["demo", "--days", "0"], "--days"),
    ],
)
def test_a_demo_option_out_of_range_is_refused_before_anything_starts(
    argv, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("EHEALTHLAB_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(argv) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
