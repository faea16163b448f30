"""The stack's background services (the API with the portal, an ingest worker): started as
processes of their own by `ehealthlab stack up --services` (and `ehealthlab demo`), on record
in the state file, shown by `stack status`, stopped by `stack down` — and a pid on record
that the kernel has given to another process is never signalled."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ehealthlab.errors import StackError
from ehealthlab.settings import Settings
from ehealthlab.stack.local import LocalStack
from ehealthlab.stack.ports import PortTakenError, listening_socket
from ehealthlab.stack.services import BackgroundState, is_running, start_ticks, stop


def fresh_env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHEALTHLAB_")}
    env["EHEALTHLAB_STATE_DIR"] = str(state_dir)
    return env


def ehealthlab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehealthlab.cli", *args],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_a_port_is_called_taken_only_when_another_process_holds_it():
    held = listening_socket()
    port = held.getsockname()[1]
    try:
        with pytest.raises(PortTakenError, match=f"port {port} on 127.0.0.1 is taken"):
            listening_socket(port)
    finally:
        held.close()
    # an address of no interface here (TEST-NET-1): no port would do, so not "taken"
    with pytest.raises(StackError, match=re.escape("cannot listen on 192.0.2.1:0")) as refused:
        listening_socket(0, "192.0.2.1")
    assert not isinstance(refused.value, PortTakenError)


def test_stack_up_services_runs_the_api_and_ingest_until_stack_down(tmp_path):
    state_dir = tmp_path / "state"
    env = fresh_env(state_dir)
    stack = LocalStack(Settings(state_dir=state_dir))
    held = socket.create_server(("127.0.0.1", 0))  # the API port asked for is taken
    env["EHEALTHLAB_API_PORT"] = str(held.getsockname()[1])
    try:
        taken = ehealthlab(
            env, "stack", "up", "--services", "--api-port", env["EHEALTHLAB_API_PORT"]
        )
        assert taken.returncode != 0
        assert f"port {env['EHEALTHLAB_API_PORT']} on 127.0.0.1 is taken" in taken.stderr
        up = ehealthlab(env, "stack", "up", "--services")
        assert up.returncode == 0, up.stderr
        # ingest started with the attempt above, before the API's port was refused
        assert re.search(r"^ingest +already running +- +\d+ ", up.stdout, re.M), up.stdout
        assert re.search(r"^api +started +127\.0\.0\.1:\d+ ", up.stdout, re.M), up.stdout
        # `stack up` has returned: the services run on, on record
        state = stack.load_state()
        assert state is not None and set(state.services) == {"api", "ingest"}
        api, ingest = state.services["api"], state.services["ingest"]
        assert is_running(api) and is_running(ingest)
        assert api.address is not None and answers(api.address + "/portal/login")
        # on the port the stack bound and handed over (--fd), not the held one, and serving
        # TCP: the access log has the client's address
        assert not api.address.endswith(f":{env['EHEALTHLAB_API_PORT']}")
        assert "--fd" in api.argv
        log = (state_dir / "logs" / "api.log").read_text()
        assert re.search(r'127\.0\.0\.1:\d+ - "GET /portal/login HTTP/1\.1" 200', log), log
        assert (state_dir / "ingest.ready").read_text().strip() == str(ingest.pid)
        status = ehealthlab(env, "stack", "status")
        assert re.search(rf"^api +running +127\.0\.0\.1:\d+ +{api.pid} ", status.stdout, re.M)
        assert re.search(rf"^ingest +running +- +{ingest.pid} ", status.stdout, re.M)
        # a second start finds them running and starts nothing
        again = ehealthlab(env, "stack", "up", "--services")
        assert re.search(rf"^api +already running .* {api.pid} ", again.stdout, re.M)
        assert stack.load_state().services["api"].pid == api.pid  # type: ignore[union-attr]

        down = ehealthlab(env, "stack", "down")
        assert down.returncode == 0, down.stderr
        assert re.search(r"^api +stopped", down.stdout, re.M), down.stdout
        assert re.search(r"^ingest +stopped", down.stdout, re.M), down.stdout
        assert not is_running(api) and not is_running(ingest)
        assert not answers(api.address + "/portal/login")
        after = stack.load_state()
        assert after is not None and after.services == {}
        # the ingest worker stopped cleanly (SIGTERM: drained, not killed)
        assert "ingest-local-1: stopped" in (state_dir / "logs" / "ingest.log").read_text()
        assert {s.service for s in stack.status()} == {"postgresql", "mosquitto"}
    finally:
        held.close()
        stack.down(purge=True)
    assert not (state_dir / "logs").exists()


def test_a_pid_on_record_that_is_now_another_process_is_left_alone(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = start_ticks(other.pid)
        assert ticks is not None
        recorded = BackgroundState(
            pid=other.pid, started=ticks - 1, argv=["api"], log=tmp_path / "api.log"
        )
        assert not is_running(recorded)
        assert stop(recorded) is False
        assert other.poll() is None  # not signalled
        mine = BackgroundState(pid=other.pid, started=ticks, argv=["x"], log=tmp_path / "x.log")
        assert is_running(mine) and stop(mine, timeout_s=10) is True
        assert other.wait(timeout=10) != 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_the_api_refuses_a_descriptor_that_is_not_a_listening_socket(tmp_path):
    env = fresh_env(tmp_path / "state")
    closed = ehealthlab(env, "api", "--fd", "99")
    assert closed.returncode == 2
    assert closed.stderr.strip() == "ehealthlab: --fd 99: not an open socket (Bad file descriptor)"
    with socket.socket() as bound:  # bound, never listening
        bound.bind(("127.0.0.1", 0))
        fd = str(bound.fileno())
        result = subprocess.run(
            [sys.executable, "-m", "ehealthlab.cli", "api", "--fd", fd], env=env,
            pass_fds=(bound.fileno(),), capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"ehealthlab: --fd {fd}: the socket is not listening"


def test_services_need_a_stack(tmp_path):
    stack = LocalStack(Settings(state_dir=tmp_path / "none"))
    with pytest.raises(StackError, match="stack up"):
        stack.start_services()
