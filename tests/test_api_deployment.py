"""`ehealthlab api` as deployed: several worker processes on one port (`--workers N`), each
building its application from the environment, and devices handed the broker's public
address rather than the one the platform's own clients use; presence recorded by one worker
only, and by another once that one is killed. Against the real test database and broker;
the server is a real process on a free loopback port.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import API_PATIENT_KEY

from ehealthlab.api.ratelimit import BURST, REFILL_PER_S
from ehealthlab.errors import AuthenticationError
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.gateway.presence import RETRY_INTERVAL_S, lock_holder
from ehealthlab.mqtt import BrokerAddress, MqttConnection, Will
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import LOOPBACK, free_port
from ehealthlab.store.db import connect

WAIT_S = 60.0  # bounds a failure only: two workers start in a few seconds
#: how soon another worker records once the recording one is killed: the workers try for the
#: lock every RETRY_INTERVAL_S (2 s), then connect to the broker; the rest is slack for a
#: loaded machine
FAILOVER_BOUND_S = RETRY_INTERVAL_S + 8.0
#: `ehealthlab` as its console script runs it
MAIN = "import sys; from ehealthlab.cli import main; sys.exit(main())"
PUBLIC_HOST = "mqtt.pilot.example.org"
PUBLIC_PORT = 8883


@dataclass
class ApiProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: IO[bytes]

    def log_text(self, last: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-last:]


def _environment(settings: Settings, state_dir: Path) -> dict[str, str]:
    """The process's settings as an operator's environment gives them (EHEALTHLAB_*)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("EHEALTHLAB_")}
    assert settings.database_url is not None and settings.mqtt_password is not None
    return {
        **inherited,
        "EHEALTHLAB_STATE_DIR": str(state_dir),
        "EHEALTHLAB_DATABASE_URL": settings.database_url.get_secret_value(),
        "EHEALTHLAB_MQTT_HOST": str(settings.mqtt_host),
        "EHEALTHLAB_MQTT_PORT": str(settings.mqtt_port),
        "EHEALTHLAB_MQTT_USERNAME": str(settings.mqtt_username),
        "EHEALTHLAB_MQTT_PASSWORD": settings.mqtt_password.get_secret_value(),
        "EHEALTHLAB_PATIENT_KEY": API_PATIENT_KEY,
        "EHEALTHLAB_MQTT_PUBLIC_HOST": PUBLIC_HOST,
        "EHEALTHLAB_MQTT_PUBLIC_PORT": str(PUBLIC_PORT),
        "EHEALTHLAB_MQTT_PUBLIC_TLS": "true",
    }


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _children(pid: int) -> list[int]:
    """The process's direct children (uvicorn's workers among them), from /proc."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _workers(api: ApiProcess) -> list[int]:
    return [p for p in _children(api.process.pid) if _is_worker(p)]


def _is_worker(pid: int) -> bool:
    """A worker spawned by multiprocessing (not its resource tracker)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return any(b"spawn_main" in a for a in argv)


@pytest.fixture(scope="module")
def api_with_workers(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the process
    # the command line's main() from `-c`, not `-m ehealthlab.cli`: each spawned worker
    # re-imports a main module before it answers uvicorn's 5 s health check, and importing
    # the whole command line takes longer than that on a loaded machine, so the supervisor
    # killed every worker before it started (docs/deployment.md, "Known limits")
    argv = [sys.executable, "-c", MAIN, "api", "--workers", "2"]
    process = subprocess.Popen(
        [*argv, "--host", LOOPBACK, "--port", str(port)],
        env=_environment(settings, tmp_path_factory.mktemp("no-stack")),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = ApiProcess(process, f"http://{LOOPBACK}:{port}", log)
    try:
        deadline = time.monotonic() + WAIT_S
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if _get(f"{api.url}/openapi.json")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        else:
            pytest.fail(f"the API did not answer:\n{api.log_text()}")
        # the supervisor listens as soon as one worker has started: wait for the other too,
        # and stop at once if one failed its start (uvicorn then stops the API on its next
        # look at it, which the first worker's death prompts)
        while process.poll() is None and time.monotonic() < deadline:
            started = api.log_text(last=1 << 30)
            if "Application startup failed" in started:
                pytest.fail(f"a worker failed its start:\n{api.log_text()}")
            if started.count("Application startup complete") >= 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"both workers did not start:\n{api.log_text()}")
        yield api
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_two_worker_processes_serve_the_api(api_with_workers: ApiProcess) -> None:
    status, body = _get(f"{api_with_workers.url}/openapi.json")
    assert status == 200
    assert json.loads(body)["info"]["title"] == "ehealthlab API"
    # both workers were spawned and are alive, each having built its app (the fixture waits
    # for both to say so)
    deadline = time.monotonic() + WAIT_S
    while True:
        workers = _workers(api_with_workers)
        if len(workers) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(workers) == 2, api_with_workers.log_text()
    # every worker answers: a burst of requests is served while both run, and none fails
    for _ in range(20):
        assert _get(f"{api_with_workers.url}/fhir/metadata")[0] == 200


def test_devices_are_handed_the_public_broker_address(
    api_with_workers: ApiProcess, settings: Settings, mosquitto_broker: MosquittoBroker
) -> None:
    operator = bootstrap_operator(settings)["token"]
    api = f"{api_with_workers.url}/api/v1"
    status, startup = _post(
        f"{api}/organisations",
        {"kind": "startup", "name": f"Deployed start-up {uuid.uuid4().hex[:6]}"},
        operator,
    )
    assert status == 201, startup
    status, device = _post(
        f"{api}/devices",
        {"type": "pulse_oximeter", "model": "PO-1", "serial": uuid.uuid4().hex[:8]},
        startup["token"],
    )
    assert status == 201, device
    mqtt = device["mqtt"]
    assert (mqtt["host"], mqtt["port"], mqtt["tls"]) == (PUBLIC_HOST, PUBLIC_PORT, True)
    # the credentials are real: the broker (reached here at its internal address) takes them
    internal = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    device_user = internal.as_user(mqtt["username"], mqtt["password"])
    connection = MqttConnection(device_user, mqtt["client_id"])
    connection.connect()
    connection.close()
    with pytest.raises(AuthenticationError):
        MqttConnection(internal.as_user(mqtt["username"], "wrong"), mqtt["client_id"]).connect()


def test_public_broker_address_falls_back_to_the_platforms() -> None:
    internal = Settings(mqtt_host="mosquitto", mqtt_port=1883)
    assert internal.device_broker() == ("mosquitto", 1883, False)
    public = internal.model_copy(
        update={"mqtt_public_host": PUBLIC_HOST, "mqtt_public_port": 8883, "mqtt_public_tls": True}
    )
    assert public.device_broker() == (PUBLIC_HOST, 8883, True)


def _wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll `condition`; the timeout only bounds a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_one_worker_records_presence_and_another_takes_over_when_it_is_killed(
    api_with_workers: ApiProcess, settings: Settings, mosquitto_broker: MosquittoBroker
) -> None:
    operator = bootstrap_operator(settings)["token"]
    api = f"{api_with_workers.url}/api/v1"
    name = f"Presence start-up {uuid.uuid4().hex[:6]}"
    status, startup = _post(f"{api}/organisations", {"kind": "startup", "name": name}, operator)
    assert status == 201, startup
    body = {"type": "thermometer", "model": "T-1", "serial": uuid.uuid4().hex[:8]}
    status, device = _post(f"{api}/devices", body, startup["token"])
    assert status == 201, device
    device_id, mqtt = device["device_id"], device["mqtt"]
    status_topic = mqtt["topics"]["status"]

    def events() -> list[tuple[str, bool]]:
        with connect(settings, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT status, retained FROM device_status_events WHERE device_id = %s"
                " ORDER BY id",
                (device_id,),
            ).fetchall()
        return [(str(status), bool(retained)) for status, retained in rows]

    def recorder() -> int | None:
        """The worker holding the presence lock ("ehl-presence HOST:PID")."""
        with connect(settings, autocommit=True) as conn:
            holder = lock_holder(conn)
        return None if holder is None else int(holder.rsplit(":", 1)[1])

    internal = BrokerAddress(mosquitto_broker.host, mosquitto_broker.port)
    will = Will(status_topic, b'{"state": "offline"}')
    connection = MqttConnection(
        internal.as_user(mqtt["username"], mqtt["password"]), mqtt["client_id"], will=will
    ).connect()
    try:
        connection.publish(status_topic, b'{"state": "online"}', retain=True)
        assert _wait_until(lambda: events() == [("online", False)]), events()
        leader = recorder()
        assert leader is not None and leader in _workers(api_with_workers), (
            api_with_workers.log_text()
        )
        os.kill(leader, signal.SIGKILL)
        killed = time.monotonic()
        # another worker (the other one, or the one uvicorn starts instead) takes the lock
        # and, subscribing, records the retained state
        assert _wait_until(lambda: len(events()) == 2), api_with_workers.log_text()
        took_over = time.monotonic() - killed
        successor = recorder()
        assert successor != leader and successor in _workers(api_with_workers)
    finally:
        connection.drop()  # the Will: offline
    assert _wait_until(lambda: len(events()) == 3), events()
    # each message once: none recorded by both workers, before or after the fail-over
    assert events() == [("online", False), ("online", True), ("offline", False)]
    assert took_over < FAILOVER_BOUND_S, f"took over after {took_over:.1f} s"


def test_the_workers_share_one_budget_of_failed_token_checks(api_with_workers: ApiProcess) -> None:
    """Each of the two workers keeps half the failed-token budget, so an address is answered
    no more plain 401s in all than one process would give it, however the kernel spreads its
    connections (urllib opens one per request), and then 429s. Last in the module: the
    loopback address stays throttled for up to two minutes."""
    wrong = {"Authorization": f"Bearer ehl_{uuid.uuid4().hex}{uuid.uuid4().hex}"}
    started = time.monotonic()
    answers = [_get(f"{api_with_workers.url}/api/v1/organisations", wrong)[0]
               for _ in range(4 * BURST)]  # fmt: skip
    earned = (time.monotonic() - started) * REFILL_PER_S  # what the address earned back meanwhile
    assert set(answers) <= {401, 429}, answers
    plain = answers.count(401)
    assert plain >= math.ceil(BURST / 2)  # the worker that took most had its whole share
    assert plain <= 2 * math.ceil(BURST / 2) + math.floor(earned), answers
    assert 429 in answers  # (not necessarily last: a worker started again may take the last)
