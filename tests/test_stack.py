"""The local stack and the server fixtures, against real PostgreSQL and Mosquitto."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from ehealthlab import cli
from ehealthlab.errors import MissingDependencyError, StackError
from ehealthlab.settings import Settings
from ehealthlab.stack import local as local_module
from ehealthlab.stack.local import LocalStack
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import (
    PortTakenError,
    accepts_connections,
    free_port,
    port_is_free,
    start_on_free_port,
)
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import PostgresPrograms, find_mosquitto, find_postgres
from ehealthlab.stack.service_status import ServiceStatus
from ehealthlab.stack.stack_settings import settings_with_stack

REFUSED = {"Not authorized", "Bad user name or password"}


def local_settings(state_dir: Path, **overrides: Any) -> Settings:
    """Settings of a local stack in `state_dir`, whatever the developer's environment says."""
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "database_url": None,
        "mqtt_host": None,
        "mqtt_port": None,
        "mqtt_username": None,
        "mqtt_password": None,
        "patient_key": None,
    }
    values.update(overrides)
    return Settings(**values)


def connack(
    host: str, port: int, username: str | None = None, password: str | None = None
) -> ReasonCode:
    """The reason code of the broker's CONNACK to an MQTT 5 client."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    reasons: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _flags, reason, _props: reasons.append(reason)
    if username is not None:
        client.username_pw_set(username, password)
    client.connect(host, port, keepalive=10)
    deadline = time.monotonic() + 30  # bounds a failure only: a loaded machine is slow
    while not reasons and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    client.loop(timeout=0.1)
    assert reasons, "no CONNACK within 30 s"
    return reasons[0]


def by_service(statuses: list[ServiceStatus]) -> dict[str, ServiceStatus]:
    return {s.service: s for s in statuses}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(local_settings(tmp_path_factory.mktemp("stack-a") / "state"))
    statuses = local.up()
    assert {s.note for s in statuses} == {"started"}
    try:
        yield local
    finally:
        local.down(purge=True)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No EHEALTHLAB_* variable from the developer's shell leaks into the command line."""
    for name in list(os.environ):
        if name.startswith("EHEALTHLAB_"):
            monkeypatch.delenv(name)
    return monkeypatch


# -- a running stack ----------------------------------------------------------------------


def test_up_starts_postgres_answering_queries(stack: LocalStack) -> None:
    postgres = by_service(stack.status())["postgresql"]
    assert postgres.running and postgres.host == "127.0.0.1"
    with psycopg.connect(stack.env()["EHEALTHLAB_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT current_database(), current_user, 6 * 7").fetchone()
    assert row == ("ehealthlab", "ehealthlab", 42)


def test_broker_refuses_anonymous_clients_and_accepts_the_admin(stack: LocalStack) -> None:
    env = stack.env()
    host, port = env["EHEALTHLAB_MQTT_HOST"], int(env["EHEALTHLAB_MQTT_PORT"])
    anonymous = connack(host, port)
    assert anonymous.is_failure and str(anonymous) in REFUSED
    wrong = connack(host, port, env["EHEALTHLAB_MQTT_USERNAME"], "not-the-password")
    assert wrong.is_failure and str(wrong) in REFUSED
    admin = connack(host, port, env["EHEALTHLAB_MQTT_USERNAME"], env["EHEALTHLAB_MQTT_PASSWORD"])
    assert not admin.is_failure


def test_mosquitto_pub_without_credentials_fails(stack: LocalStack) -> None:
    mosquitto_pub = shutil.which("mosquitto_pub")
    assert mosquitto_pub is not None, "install mosquitto-clients"
    port = stack.env()["EHEALTHLAB_MQTT_PORT"]
    result = subprocess.run(
        [mosquitto_pub, "-h", "127.0.0.1", "-p", port, "-t", "x", "-m", "y"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode != 0
    assert "not authori" in result.stderr.lower()


def test_up_twice_is_harmless(stack: LocalStack) -> None:
    before = by_service(stack.status())
    again = by_service(stack.up())
    for service in ("postgresql", "mosquitto"):
        assert again[service].note == "already running"
        assert again[service].port == before[service].port
        assert again[service].pid == before[service].pid is not None


def test_state_file_is_private_and_holds_a_patient_key(stack: LocalStack) -> None:
    assert stat.S_IMODE(stack.state_file.stat().st_mode) == 0o600
    state = stack.load_state()
    assert state is not None and len(state.patient_key) >= 32


def test_env_lines_evaluate_to_the_stack_settings(
    stack: LocalStack, clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environment.setenv("EHEALTHLAB_STATE_DIR", str(stack.state_dir))
    assert cli.main(["stack", "env"]) == 0
    printed = capsys.readouterr().out
    assert all(line.startswith("export EHEALTHLAB_") for line in printed.splitlines())
    shell = subprocess.run(
        ["sh", "-c", printed + "\nenv"], capture_output=True, text=True, env={}, check=True
    )
    evaluated = dict(
        line.split("=", 1) for line in shell.stdout.splitlines() if line.startswith("EHEALTHLAB_")
    )
    expected = stack.env()
    assert evaluated == expected
    mosquitto = by_service(stack.status())["mosquitto"]
    assert expected["EHEALTHLAB_MQTT_HOST"] == "127.0.0.1"
    assert expected["EHEALTHLAB_MQTT_PORT"] == str(mosquitto.port)
    assert expected["EHEALTHLAB_STATE_DIR"] == str(stack.state_dir)
    assert Path(expected["EHEALTHLAB_STATE_DIR"]).is_absolute()
    assert set(expected) == {
        "EHEALTHLAB_DATABASE_URL",
        "EHEALTHLAB_MQTT_HOST",
        "EHEALTHLAB_MQTT_PORT",
        "EHEALTHLAB_MQTT_USERNAME",
        "EHEALTHLAB_MQTT_PASSWORD",
        "EHEALTHLAB_PATIENT_KEY",
        "EHEALTHLAB_STATE_DIR",
    }


def test_settings_with_stack_fills_only_what_the_environment_left_unset(
    stack: LocalStack,
) -> None:
    env = stack.env()
    completed = settings_with_stack(local_settings(stack.state_dir))
    assert completed.require_database_url() == env["EHEALTHLAB_DATABASE_URL"]
    assert completed.require_mqtt() == ("127.0.0.1", int(env["EHEALTHLAB_MQTT_PORT"]))
    assert completed.require_patient_key() == env["EHEALTHLAB_PATIENT_KEY"].encode()

    external_broker = local_settings(stack.state_dir, mqtt_host="broker.example", mqtt_port=1883)
    completed = settings_with_stack(external_broker)
    assert completed.require_mqtt() == ("broker.example", 1883)
    assert completed.mqtt_username is None and completed.mqtt_password is None
    assert completed.database_url is not None

    nothing = settings_with_stack(local_settings(stack.state_dir / "elsewhere"))
    assert nothing.database_url is None and nothing.mqtt_host is None


def test_two_state_dirs_are_two_stacks_that_stop_and_restart_alone(
    stack: LocalStack, tmp_path: Path
) -> None:
    other = LocalStack(local_settings(tmp_path / "state-b"))
    try:
        mine = by_service(other.up())
        theirs = by_service(stack.status())
        for service in ("postgresql", "mosquitto"):
            assert mine[service].running and theirs[service].running
            assert mine[service].port != theirs[service].port
            assert mine[service].pid != theirs[service].pid
            assert mine[service].directory != theirs[service].directory
        with psycopg.connect(other.env()["EHEALTHLAB_DATABASE_URL"], autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")

        stopped = by_service(other.down())
        assert {s.note for s in stopped.values()} == {"stopped"}
        assert {s.state for s in by_service(other.status()).values()} == {"stopped"}
        for service in ("postgresql", "mosquitto"):
            port = mine[service].port
            assert port is not None and not accepts_connections(port)
            assert by_service(stack.status())[service].running
        assert by_service(other.down())["postgresql"].state == "stopped"  # harmless again

        # a port taken meanwhile moves; a free one is kept, and so is the data
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", mine["mosquitto"].port))
            squatter.listen()
            restarted = by_service(other.up())
        assert restarted["postgresql"].port == mine["postgresql"].port
        assert restarted["mosquitto"].port != mine["mosquitto"].port
        assert restarted["mosquitto"].running
        with psycopg.connect(other.env()["EHEALTHLAB_DATABASE_URL"]) as conn:
            assert conn.execute("SELECT n FROM kept").fetchone() == (7,)
    finally:
        other.down(purge=True)
    assert by_service(other.status())["postgresql"].state == "not created"
    assert not (tmp_path / "state-b").exists()


def test_a_shell_pointed_at_its_own_stack_can_stop_and_restart_it(tmp_path: Path) -> None:
    """After `eval "$(ehealthlab stack env)"`, the variables name the stack itself: it is not
    external, so `down` stops it, `status` says so and `up` starts it again."""
    state_dir = tmp_path / "own"
    first = LocalStack(local_settings(state_dir))
    try:
        first.up()
        env = first.env()
        evaluated = LocalStack(
            local_settings(
                state_dir,
                database_url=env["EHEALTHLAB_DATABASE_URL"],
                mqtt_host=env["EHEALTHLAB_MQTT_HOST"],
                mqtt_port=int(env["EHEALTHLAB_MQTT_PORT"]),
                mqtt_username=env["EHEALTHLAB_MQTT_USERNAME"],
                mqtt_password=env["EHEALTHLAB_MQTT_PASSWORD"],
            )
        )
        assert {s.state for s in evaluated.status()} == {"running"}
        assert {s.state for s in evaluated.down()} == {"stopped"}
        assert {s.state for s in evaluated.up()} == {"running"}
    finally:
        first.down(purge=True)


def test_external_services_start_nothing(tmp_path: Path) -> None:
    settings = local_settings(
        tmp_path / "state",
        database_url="postgresql://u:p@db.example:6543/pilot",
        mqtt_host="broker.example",
        mqtt_port=8883,
    )
    local = LocalStack(settings)
    statuses = by_service(local.up())
    assert statuses["postgresql"].state == "external"
    assert statuses["postgresql"].address == "db.example:6543"
    assert statuses["mosquitto"].state == "external"
    assert statuses["mosquitto"].address == "broker.example:8883"
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [".lock", "stack.json"]
    env = local.env()
    assert env["EHEALTHLAB_DATABASE_URL"] == "postgresql://u:p@db.example:6543/pilot"
    assert env["EHEALTHLAB_MQTT_HOST"] == "broker.example"
    assert "EHEALTHLAB_MQTT_PASSWORD" not in env
    assert len(env["EHEALTHLAB_PATIENT_KEY"]) >= 32
    export = tmp_path / "state" / "exports" / "job-1" / "Observation.ndjson"
    export.parent.mkdir(parents=True)
    export.write_text("{}\n")  # what a bulk export leaves: the database's data, copied
    local.down(purge=True)
    assert not (tmp_path / "state").exists()


def test_env_without_a_stack_says_what_to_start(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="ehealthlab stack up"):
        LocalStack(local_settings(tmp_path / "nothing")).env()


# -- the command line -----------------------------------------------------------------------


def test_cli_up_status_env_down(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environment.setenv("EHEALTHLAB_STATE_DIR", str(tmp_path / "state"))
    try:
        assert cli.main(["stack", "up"]) == 0
        out = capsys.readouterr().out
        assert out.count("started") == 2 and "127.0.0.1:" in out

        assert cli.main(["stack", "status"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:3] == ["service", "state", "address"]
        assert [line.split()[1] for line in lines[1:]] == ["running", "running"]

        assert cli.main(["stack", "env"]) == 0
        exports = capsys.readouterr().out
        assert f"export EHEALTHLAB_STATE_DIR={tmp_path / 'state'}" in exports

        assert cli.main(["stack", "down"]) == 0
        capsys.readouterr()
        assert cli.main(["stack", "status"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[1] for line in lines[1:]] == ["stopped", "stopped"]
    finally:
        assert cli.main(["stack", "down", "--purge"]) == 0


@pytest.mark.parametrize("argv", [["stack", "sideways"], ["stack"], ["stack", "up", "--fast"]])
def test_cli_wrong_argument_is_one_line_and_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["up", "down", "status", "env"])
def test_cli_every_stack_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["stack", command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ehealthlab stack" in capsys.readouterr().out


# -- TimescaleDB ----------------------------------------------------------------------------


def test_timescale_without_the_extension_fails_in_one_line_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = find_postgres()
    bare = PostgresPrograms(
        version=real.version, bin_dir=real.bin_dir, share_dir=tmp_path, pkglib_dir=tmp_path
    )
    monkeypatch.setattr(local_module, "find_postgres", lambda: bare)
    local = LocalStack(local_settings(tmp_path / "state"))
    with pytest.raises(MissingDependencyError) as error:
        local.up(timescale=True)
    message = str(error.value)
    assert "\n" not in message
    assert "timescaledb" in message and "apt-get install -y" in message
    assert not (tmp_path / "state").exists()


def test_stack_up_timescale_preloads_the_extension(tmp_path: Path) -> None:
    programs = find_postgres()
    if not (programs.share_dir / "extension" / "timescaledb.control").is_file():
        pytest.skip("TimescaleDB is not installed for this PostgreSQL")
    local = LocalStack(local_settings(tmp_path / "state"))
    try:
        local.up(timescale=True)
        with psycopg.connect(local.env()["EHEALTHLAB_DATABASE_URL"], autocommit=True) as conn:
            assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("timescaledb",)
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        state = local.load_state()
        assert state is not None and state.postgresql is not None
        assert state.postgresql.timescale
    finally:
        local.down(purge=True)


# -- programs and ports -----------------------------------------------------------------------


def test_missing_programs_say_how_to_install_them(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"apt-get install -y postgresql$"):
        find_postgres(lib_root=tmp_path, search_path=str(tmp_path))
    with pytest.raises(
        MissingDependencyError, match=r"apt-get install -y mosquitto mosquitto-clients$"
    ):
        find_mosquitto(lib_dirs=[tmp_path], search_path=str(tmp_path))


def test_free_port_is_free_and_a_bound_one_is_not() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert not port_is_free(port)
        assert accepts_connections(port)


def test_start_on_free_port_retries_a_lost_race() -> None:
    class Racy:
        def __init__(self) -> None:
            self.port = free_port()
            self.tried: list[int] = []

        def start(self) -> None:
            self.tried.append(self.port)
            if len(self.tried) < 3:
                raise PortTakenError(f"port {self.port} taken")

    server = Racy()
    start_on_free_port(server)
    assert len(server.tried) == 3 and server.port == server.tried[-1]


# -- the session fixtures -----------------------------------------------------------------------


def test_postgres_server_fixture_hosts_test_databases(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS fixture_check")
        conn.execute("CREATE DATABASE fixture_check")
    try:
        with psycopg.connect(postgres_server.url("fixture_check")) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
    finally:
        with psycopg.connect(postgres_server.admin_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE fixture_check")


def test_mosquitto_broker_fixture_restarts_with_its_persistence(
    mosquitto_broker: MosquittoBroker,
) -> None:
    broker = mosquitto_broker
    admin = ["-u", broker.admin_username, "-P", broker.admin_password]
    ctrl = [str(broker.programs.mosquitto_ctrl), "-h", broker.host, "-p", str(broker.port)]
    ctrl += [*admin, "dynsec"]
    device = ["-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-i", "fixture-device"]
    device += ["-u", "fixture-device", "-P", "device-secret"]
    try:
        for args in (
            ["createClient", "fixture-device", "-p", "device-secret"],
            ["createRole", "fixture-role"],
            ["addRoleACL", "fixture-role", "publishClientSend", "fixture/#", "allow"],
            ["addRoleACL", "fixture-role", "subscribePattern", "fixture/#", "allow"],
            ["addClientRole", "fixture-device", "fixture-role"],
        ):
            subprocess.run([*ctrl, *args], capture_output=True, check=True, timeout=10)
        publish = subprocess.run(
            ["mosquitto_pub", *device, "-t", "fixture/retained", "-m", "kept", "-r", "-q", "1"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        assert publish.returncode == 0, publish.stderr

        port = broker.port
        broker.stop()
        assert not broker.is_running() and not accepts_connections(port)
        broker.start()
        assert broker.port == port

        received = subprocess.run(
            ["mosquitto_sub", *device, "-t", "fixture/retained", "-C", "1", "-W", "30"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert received.stdout.strip() == "kept", received.stderr
    finally:
        if broker.is_running():  # leave the shared broker as we found it
            subprocess.run(
                ["mosquitto_pub", *device, "-t", "fixture/retained", "-r", "-n"],
                capture_output=True,
                check=False,
                timeout=10,
            )
            for args in (["deleteClient", "fixture-device"], ["deleteRole", "fixture-role"]):
                subprocess.run([*ctrl, *args], capture_output=True, check=False, timeout=10)
