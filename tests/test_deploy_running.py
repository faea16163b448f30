"""The parts of the production deployment that can run here, run for real: the broker's
configuration and entrypoint start the installed Mosquitto with test certificates (generated
now by openssl, never committed), the backup script dumps the test server and its dump
restores, and the ingest workers' healthcheck reads a running worker's metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import create_database, drop_database, with_database
from deploy_fixtures import DEPLOY, MOSQUITTO_CONF, WAIT_S

from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import connack_code
from ehealthlab.stack.plugin import INGEST_PARTITIONS, JOURNAL, RECEIVE_STAMP, build_plugin
from ehealthlab.stack.ports import LOOPBACK, free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, find_mosquitto, find_postgres, place_for

# -- the broker, started from the deployment's configuration ------------------------------


@dataclass
class Broker:
    internal: BrokerAddress
    tls_port: int
    ca_file: Path
    directory: Path


def openssl(*argv: str | Path) -> None:
    subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True)


def test_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost, made now (never committed)."""
    ca_key, ca, key, request, cert = (directory / n for n in (
        "ca.key", "ca.pem", "privkey.pem", "server.csr", "fullchain.pem"
    ))  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
            "-days", "2", "-subj", "/CN=ehealthlab test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
            "-subj", "/CN=localhost")  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", extensions)  # fmt: skip
    key.chmod(0o600)
    return ca, cert, key


test_certificates.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def deployed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The installed Mosquitto, started by the deployment's entrypoint with a copy of its
    configuration in which only paths and ports differ."""
    programs = find_mosquitto()
    account = ServiceAccount.for_server("mosquitto")
    directory = place_for(account, tmp_path_factory.mktemp("deployed-broker") / "broker")
    mounted, certs, data, plugins = (directory / n for n in ("tls", "certs", "data", "plugins"))
    for d in (mounted, certs, data):
        d.mkdir(parents=True, mode=0o700)
    account.give(data)  # as the image does: the broker's user writes its persistence there
    ca, _cert, _key = test_certificates(mounted)
    plugin = build_plugin(RECEIVE_STAMP, plugins)
    partitions_plugin = build_plugin(INGEST_PARTITIONS, plugins)
    journal_plugin = build_plugin(JOURNAL, plugins)
    for path in (directory, plugins, plugin, partitions_plugin, journal_plugin):
        path.chmod(0o755)
    internal_port, tls_port = free_port(), free_port()
    replacements = {
        "listener 1883": f"listener {internal_port} {LOOPBACK}",
        "listener 8883": f"listener {tls_port} {LOOPBACK}",
        "/mosquitto/certs/": f"{certs}/",
        "/mosquitto/data/": f"{data}/",
        "/usr/lib/ehealthlab/ehl_receive_stamp.so": str(plugin),
        "/usr/lib/ehealthlab/ehl_ingest_partitions.so": str(partitions_plugin),
        "/usr/lib/ehealthlab/ehl_journal.so": str(journal_plugin),
        "/usr/lib/ehealthlab/mosquitto_dynamic_security.so": str(programs.dynsec_plugin),
    }
    text = MOSQUITTO_CONF.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config = directory / "mosquitto.conf"
    config.write_text(text)
    username, password = "ehealthlab-admin", uuid.uuid4().hex
    environment = {
        "PATH": ":".join(
            [
                os.environ["PATH"],
                str(programs.mosquitto.parent),
                str(programs.mosquitto_ctrl.parent),
            ]
        ),
        "EHL_MOSQUITTO_CONFIG": str(config),
        "EHL_DYNSEC_FILE": str(data / "dynamic-security.json"),
        "EHL_TLS_MOUNT": str(mounted),
        "EHL_TLS_DIR": str(certs),
        "EHL_MQTT_ADMIN_USERNAME": username,
        "EHL_MQTT_ADMIN_PASSWORD": password,
        "EHL_MQTT_INTERNAL_PORT": str(internal_port),
    }
    log = directory / "entrypoint.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["sh", str(DEPLOY / "mosquitto" / "entrypoint.sh")],
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if connack_code(LOOPBACK, internal_port, username, password) == 0:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail(f"the deployed broker did not start:\n{log.read_text()}")
        health = subprocess.run(
            ["sh", str(DEPLOY / "mosquitto" / "healthcheck.sh")],
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert health.returncode == 0, health.stderr
        broker = BrokerAddress(LOOPBACK, internal_port, username, password)
        yield Broker(broker, tls_port, ca, directory)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_the_deployed_broker_stamps_what_devices_send_over_tls(deployed_broker: Broker) -> None:
    """A device registered through dynamic security publishes over TLS on the devices'
    listener; the platform, on the internal listener, receives it with the broker's stamp."""
    device, secret = f"po-{uuid.uuid4().hex[:16]}", uuid.uuid4().hex
    with DynamicSecurity(deployed_broker.internal) as dynsec:
        dynsec.ensure_platform_role(deployed_broker.internal.username or "")
        dynsec.create_device_client(device, secret)
    arrived: list[ReceivedMessage] = []
    platform = MqttConnection(
        deployed_broker.internal, "ehl-test-platform", on_message=arrived.append
    )
    platform.connect()
    try:
        platform.subscribe(f"ehl/v1/devices/{device}/readings")
        publish = [
            "mosquitto_pub", "-h", "localhost", "-p", str(deployed_broker.tls_port),
            "--cafile", str(deployed_broker.ca_file), "-V", "mqttv5", "-q", "1",
            "-u", device, "-P", secret, "-i", device,
            "-t", f"ehl/v1/devices/{device}/readings", "-m", json.dumps({"probe": 1}),
        ]  # fmt: skip
        subprocess.run(publish, check=True, capture_output=True, timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while not arrived and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        platform.close()
    assert len(arrived) == 1
    assert arrived[0].broker_stamped, "the receive-stamp plugin is loaded"
    # the same device without the CA's trust, or in plain text on the TLS port, gets nowhere
    untrusted = subprocess.run(
        [*publish[:5], "--cafile", "/dev/null", *publish[7:]],
        capture_output=True,
        timeout=WAIT_S,
        check=False,
    )
    assert untrusted.returncode != 0
    with pytest.raises(OSError):
        connack_code(LOOPBACK, deployed_broker.tls_port, device, secret)


def test_the_deployed_broker_refuses_anonymous_clients(deployed_broker: Broker) -> None:
    assert connack_code(LOOPBACK, deployed_broker.internal.port, "", "") == 5


# -- backups -----------------------------------------------------------------------------


def test_the_backup_script_dumps_the_store_roles_and_dynsec_file_and_the_dump_restores(
    postgres_server: PostgresServer,
    plain_admin_url: str,
    migrated_template: str,
    tmp_path: Path,
) -> None:
    source = create_database(plain_admin_url, template=migrated_template)
    restored = create_database(plain_admin_url)
    try:
        with psycopg.connect(with_database(plain_admin_url, source), autocommit=True) as conn:
            conn.execute("INSERT INTO organisations (kind, name) VALUES ('startup', 'Backed up')")
        dynsec = tmp_path / "dynamic-security.json"
        dynsec.write_text('{"clients": []}')
        target = tmp_path / "backups"
        target.mkdir()
        programs = find_postgres()
        environment = {
            "PATH": f"{programs.bin_dir}:{os.environ['PATH']}",
            "PGHOST": postgres_server.host,
            "PGPORT": str(postgres_server.port),
            "PGUSER": postgres_server.user,
            "PGPASSWORD": postgres_server.password,
            "PGDATABASE": source,
            "EHL_BACKUP_TARGET": str(target),
            "EHL_DYNSEC_FILE": str(dynsec),
        }
        script = str(DEPLOY / "backup" / "backup.sh")

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["sh", script, *argv], env=environment, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip

        assert run("check").returncode == 1, "no dump yet: unhealthy"
        done = run("once")
        assert done.returncode == 0, done.stderr
        assert run("check").returncode == 0
        files = sorted(p.name for p in target.iterdir())
        assert [f.split("-")[0] for f in files] == ["db", "dynsec", "roles"], files
        assert all(not f.startswith(".") for f in files), "no partial file left"
        assert (target / files[1]).read_text() == dynsec.read_text()
        assert "CREATE ROLE" in (target / files[2]).read_text()
        for path in target.iterdir():
            assert path.stat().st_mode & 0o077 == 0, f"{path.name} readable by others"
        restore = subprocess.run(
            [str(programs.bin_dir / "pg_restore"), "--no-owner", "--exit-on-error",
             "--dbname", with_database(plain_admin_url, restored), str(target / files[0])],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert restore.returncode == 0, restore.stderr
        with psycopg.connect(with_database(plain_admin_url, restored)) as conn:
            row = conn.execute("SELECT count(*) FROM organisations WHERE name = 'Backed up'")
            assert row.fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM municipalities").fetchone() != (0,)
        # a failing dump is no backup: the script says so and leaves no file with a final name
        environment["PGDATABASE"] = "no_such_database"
        before = set(target.iterdir())
        assert run("once").returncode != 0
        assert {p for p in target.iterdir() if not p.name.startswith(".")} == before
    finally:
        drop_database(plain_admin_url, source)
        drop_database(plain_admin_url, restored)


# -- the ingest workers' healthcheck ------------------------------------------------------


def test_the_ingest_healthcheck_reads_a_running_workers_metrics(settings: Settings) -> None:
    """deploy/ingest/healthcheck.py against a real worker: unhealthy before it serves its
    metrics, healthy once it runs with the database up."""
    port = free_port()
    check = [sys.executable, str(DEPLOY / "ingest" / "healthcheck.py"), str(port)]
    assert subprocess.run(check, capture_output=True, check=False).returncode != 0
    assert settings.database_url is not None and settings.mqtt_password is not None
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EHEALTHLAB_")},
        "EHEALTHLAB_STATE_DIR": "/nonexistent-ehealthlab-state",
        "EHEALTHLAB_DATABASE_URL": settings.database_url.get_secret_value(),
        "EHEALTHLAB_MQTT_HOST": str(settings.mqtt_host),
        "EHEALTHLAB_MQTT_PORT": str(settings.mqtt_port),
        "EHEALTHLAB_MQTT_USERNAME": str(settings.mqtt_username),
        "EHEALTHLAB_MQTT_PASSWORD": settings.mqtt_password.get_secret_value(),
    }
    # the shared subscription and a name of its own: a clean stop ends the worker's session,
    # so the session's broker queues nothing for it afterwards (a partitioned one would)
    argv = ["ingest", "--subscription", "shared", "--first", "91"]  # its session ends with it
    worker = subprocess.Popen(
        [sys.executable, "-m", "ehealthlab.cli", *argv, "--metrics-port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        healthy = False
        while not healthy and worker.poll() is None and time.monotonic() < deadline:
            healthy = subprocess.run(check, capture_output=True, check=False).returncode == 0
            time.sleep(0.1)
        assert healthy, "the worker never reported itself healthy"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, errors = worker.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, errors = worker.communicate()
    assert worker.returncode == 0, errors.decode(errors="replace")[-2000:]
