"""The production deployment in deploy/, checked as far as a machine without a Docker engine
allows: the Compose file parsed with PyYAML and checked against the repository (files it
mounts and copies, variables it reads, images, ports, healthchecks, the commands it runs
parsed by `ehealthlab`'s own parser); Mosquitto's configuration and the Caddyfile read for
the directives the deployment relies on; and the parts that can run here run for real: the
broker's configuration and entrypoint start the installed Mosquitto with test certificates
(generated now by openssl, never committed), and the backup script dumps the test server
and its dump restores.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import distribution, version
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import create_database, drop_database, with_database
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ehealthlab.cli import build_parser
from ehealthlab.contract import MAX_PACKET_BYTES
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import MAX_QUEUED_BYTES, connack_code
from ehealthlab.stack.plugin import INGEST_PARTITIONS, RECEIVE_STAMP, build_plugin
from ehealthlab.stack.ports import LOOPBACK, free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, find_mosquitto, find_postgres, place_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCS = ROOT / "docs" / "deployment.md"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
CADDYFILE = DEPLOY / "caddy" / "Caddyfile"
WAIT_S = 30.0  # bounds a failure only

#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; not $${...}
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
#: the host ports a service may publish on every interface: Caddy's HTTPS, devices' MQTT/TLS
PUBLIC_PORTS = {("proxy", 443), ("mosquitto", 8883)}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML tree, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def variables_used() -> set[str]:
    return {m.group(1) for text in strings(compose()) for m in VARIABLE.finditer(text)}


def interpolate(text: str, values: dict[str, str]) -> str:
    """As Compose does, with the example's values (an empty secret counts as set)."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        given = values.get(name)
        if operator in (":-", "-") and not given:
            return argument
        assert given is not None, f"${{{name}}} has no value in .env.example"
        return given or f"<{name}>"

    return VARIABLE.sub(value, text).replace("$$", "$")


def command(service: dict[str, Any]) -> list[str]:
    argv = service["command"]
    assert isinstance(argv, list), "commands are lists: no shell between Compose and them"
    return [interpolate(str(a), env_example()) for a in argv]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def built_from_repository(service: dict[str, Any]) -> bool:
    return "build" in service


# -- the Compose file ----------------------------------------------------------------------


def test_the_deployment_runs_every_part_of_the_platform() -> None:
    assert set(services()) == {
        "timescaledb",
        "mosquitto",
        "migrate",
        "api",
        "ingest-1",
        "ingest-2",
        "dashboards",
        "grafana",
        "proxy",
        "backup",
    }


def test_every_variable_is_documented_in_the_example_and_the_docs() -> None:
    used = variables_used()
    documented = env_example()
    assert used - set(documented) == set(), "used by compose.yaml, missing from .env.example"
    assert set(documented) - used == set(), "in .env.example, unused by compose.yaml"
    docs = DOCS.read_text()
    assert {v for v in used if f"`{v}`" not in docs} == set(), "missing from deployment.md"
    # each is explained by a comment above it (or above its group), not only listed
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = index - 1
            while "=" in lines[above] and not lines[above].startswith("#"):
                above -= 1
            assert lines[above].startswith("#"), f"{line}: no comment above it"


def test_secrets_must_be_set_and_have_no_example_value() -> None:
    secrets = {name for name in variables_used() if name.endswith(("PASSWORD", "_KEY"))}
    secrets.discard("EHL_MQTT_TLS_KEY")  # a path to the key, not the key
    assert secrets >= {"EHL_DB_PASSWORD", "EHL_PATIENT_KEY", "EHL_MQTT_ADMIN_PASSWORD"}
    for text in strings(compose()):
        for match in VARIABLE.finditer(text):
            if match.group(1) in secrets:
                assert match.group(2) == ":?", f"{match.group(0)}: a secret has no default"
    assert {name: env_example()[name] for name in secrets if env_example()[name]} == {}


def volume_source(entry: str) -> str:
    """The source of a short-syntax volume (a variable's `:?message` holds colons)."""
    variable = VARIABLE.match(entry)
    return variable.group(0) if variable else entry.split(":", 1)[0]


def volume_target(entry: str) -> str:
    return entry[len(volume_source(entry)) + 1 :].split(":", 1)[0]


def test_every_mounted_file_exists_in_the_repository() -> None:
    named = set(compose()["volumes"])
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume_source(str(volume))
            if source.startswith(("./", "../")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            elif source.startswith("${"):
                assert VARIABLE.fullmatch(source), f"{name}: {source}"  # documented above
            else:
                assert source in named, f"{name}: volume {source} is not declared"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [Instruction(*[*line.split(None, 1), ""][:2]) for line in joined]


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `relative` out (the last matching pattern wins)."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, body) for p in prefixes):
            excluded = not negated
    return excluded


def builds() -> list[tuple[str, Path, Path]]:
    """(service, context, Dockerfile) of every image built from the repository."""
    found = []
    for name, service in services().items():
        if built_from_repository(service):
            context = (DEPLOY / service["build"]["context"]).resolve()
            found.append((name, context, context / service["build"]["dockerfile"]))
    return found


def test_every_copied_file_exists_and_reaches_the_build() -> None:
    assert {name for name, _, _ in builds()} >= {"mosquitto", "api", "migrate"}
    for name, context, path in builds():
        assert context == ROOT, f"{name}: built from the repository's root"
        assert path.is_file(), f"{name}: {path}"
        ignore = path.with_name(path.name + ".dockerignore")
        if not ignore.exists():
            ignore = DEPLOY / "Dockerfile.dockerignore"
        patterns = [
            line.strip()
            for line in ignore.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for instruction in dockerfile(path):
            if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
                continue
            *sources, _target = shlex.split(instruction.arguments)
            for source in sources:
                assert (context / source).exists(), f"{path.name}: COPY {source}"
                assert not dockerignored(source, patterns), f"{source} is left out of the build"


def pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    # a version (2.28.3-pg15, 12.4.3) or a dated snapshot (bookworm-20251229-slim)
    return bool(name) and tag != "latest" and re.search(r"\d+\.\d+|\d{8}", tag) is not None


def test_every_image_is_pinned() -> None:
    for name, service in services().items():
        image = interpolate(service["image"], env_example())
        assert pinned(image), f"{name}: {image}"
    for _, _, path in builds():
        for instruction in dockerfile(path):
            if instruction.keyword == "FROM":
                image = instruction.arguments.split()[0]
                assert pinned(image), f"{path}: FROM {image}"
    database = services()["timescaledb"]["image"]
    assert database == "timescale/timescaledb:2.28.3-pg15", "the version the tests ran on"
    assert services()["backup"]["image"] == database, "pg_dump of the server's own version"
    assert re.fullmatch(r"grafana/grafana(-oss)?:1[12]\.\d+\.\d+", services()["grafana"]["image"])


def test_the_image_installs_the_dependency_versions_the_tests_ran() -> None:
    constraints = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            constraints[canonicalize_name(requirement.name)] = str(requirement.specifier)
    for text in distribution("ehealthlab").requires or []:
        requirement = Requirement(text)
        if requirement.marker is None:  # runtime, not an extra
            name = canonicalize_name(requirement.name)
            assert constraints.get(name) == f"=={version(name)}", f"constraints.txt: {name}"


def test_every_service_has_a_healthcheck_or_is_a_one_shot_others_wait_for() -> None:
    completed = {
        dependency
        for service in services().values()
        for dependency, condition in (service.get("depends_on") or {}).items()
        if condition["condition"] == "service_completed_successfully"
    }
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check is not None, f"{name}: no healthcheck"
        if check.get("disable"):
            assert name in completed, f"{name}: no healthcheck and no one waits for it"
            assert service["restart"] == "no", f"{name}: a one-shot is not restarted"
        else:
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name
            assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
            assert service["restart"] == "unless-stopped", name


def test_services_start_after_what_they_need_is_healthy() -> None:
    for name, service in services().items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services(), f"{name} depends on {dependency}"
            wanted = "service_completed_successfully" if dependency in {
                "migrate", "dashboards"
            } else "service_healthy"  # fmt: skip
            assert condition["condition"] == wanted, f"{name} -> {dependency}"
    for name in ("api", "ingest-1", "ingest-2", "dashboards"):
        assert "migrate" in services()[name]["depends_on"], f"{name} runs before migrations"


def published(service: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """(host address, container port) of each published port."""
    for entry in service.get("ports", []):
        parts = interpolate(str(entry), env_example()).split(":")
        address = parts[0] if len(parts) == 3 else "0.0.0.0"  # noqa: S104 - Compose's default
        yield address, int(parts[-1].split("/")[0])


def test_only_https_and_the_devices_tls_port_are_public() -> None:
    public = set()
    for name, service in services().items():
        assert service.get("network_mode") != "host", name
        for address, port in published(service):
            if address != "127.0.0.1":
                public.add((name, port))
    assert public == PUBLIC_PORTS


def test_the_platforms_processes_run_as_deployed() -> None:
    parser = build_parser()
    ehealthlab = [n for n, s in services().items() if s.get("image", "").startswith("ehealthlab:")]
    assert set(ehealthlab) == {"migrate", "api", "ingest-1", "ingest-2", "dashboards"}
    for name in ehealthlab:
        parser.parse_args(command(services()[name]))  # a wrong option exits here
    api = command(services()["api"])
    assert int(option(api, "--workers")) >= 2
    assert (option(api, "--host"), option(api, "--port")) == ("0.0.0.0", "8000")  # noqa: S104
    assert command(services()["migrate"]) == ["db", "migrate"]


def test_ingest_runs_partitioned_workers_that_cover_every_partition() -> None:
    workers = [command(s) for n, s in services().items() if n.startswith("ingest")]
    assert len(workers) >= 2
    partitions = {int(option(argv, "--partitions")) for argv in workers}
    assert len(partitions) == 1, "--partitions must be the same for every worker"
    firsts = sorted(int(option(argv, "--first")) for argv in workers)
    assert firsts == list(range(1, partitions.pop() + 1)), "one worker per partition"
    for argv in workers:
        assert option(argv, "--subscription") == "partitioned"
        assert "--workers" not in argv, "one worker per container, one stable name each"


def test_the_platform_reaches_the_broker_inside_and_devices_outside() -> None:
    environment = compose()["x-ehealthlab"]["environment"]
    assert services()["api"]["environment"].items() >= environment.items()
    values = {k: interpolate(str(v), env_example()) for k, v in environment.items()}
    assert values["EHEALTHLAB_MQTT_HOST"] == "mosquitto"
    assert values["EHEALTHLAB_MQTT_PORT"] == "1883"
    assert values["EHEALTHLAB_MQTT_PUBLIC_HOST"] == env_example()["EHL_MQTT_PUBLIC_HOST"]
    assert values["EHEALTHLAB_MQTT_PUBLIC_PORT"] == env_example()["EHL_MQTT_PUBLIC_PORT"]
    assert values["EHEALTHLAB_MQTT_PUBLIC_TLS"] == "true"
    assert values["EHEALTHLAB_DATABASE_URL"].startswith("postgresql://")
    assert "@timescaledb:5432/" in values["EHEALTHLAB_DATABASE_URL"]
    assert values["EHEALTHLAB_STORE_FORM"] == "timescale"
    for name in ("ingest-1", "ingest-2", "migrate", "dashboards"):
        assert services()[name]["environment"] == environment, name


# -- Mosquitto's configuration ------------------------------------------------------------


def directives(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            pairs.append((name, value.strip()))
    return pairs


def listeners(pairs: list[tuple[str, str]]) -> dict[int, dict[str, str]]:
    """Each listener's own options (those that follow its `listener` line)."""
    found: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for name, value in pairs:
        if name == "listener":
            current = found.setdefault(int(value.split()[0]), {})
        elif name in {"certfile", "keyfile", "cafile", "tls_version", "require_certificate"}:
            assert current is not None, f"{name} before any listener"
            current[name] = value
    return found


def test_mosquitto_enables_dynamic_security_the_stamp_plugin_and_tls_for_devices() -> None:
    pairs = directives(MOSQUITTO_CONF)
    settings = dict(pairs)
    assert settings["allow_anonymous"] == "false"
    assert settings["per_listener_settings"] == "false"
    plugins = [value for name, value in pairs if name == "plugin"]
    assert [Path(p).name for p in plugins] == [
        "ehl_receive_stamp.so",
        "ehl_ingest_partitions.so",
        "mosquitto_dynamic_security.so",
    ]
    assert settings["plugin_opt_config_file"] == "/mosquitto/data/dynamic-security.json"
    assert settings["persistence"] == "true"
    assert settings["persistence_location"] == "/mosquitto/data/"
    assert int(settings["max_queued_messages"]) >= 1_000_000
    assert int(settings["max_packet_size"]) == MAX_PACKET_BYTES  # as the local stack's
    assert int(settings["max_queued_bytes"]) == MAX_QUEUED_BYTES  # as the local stack's
    found = listeners(pairs)
    assert set(found) == {1883, 8883}
    assert found[1883] == {}, "the internal listener is the compose network's only"
    assert found[8883]["certfile"] == "/mosquitto/certs/fullchain.pem"
    assert found[8883]["keyfile"] == "/mosquitto/certs/privkey.pem"
    # where the image puts them: the plugins it builds and links, the volume it declares
    image = (DEPLOY / "mosquitto" / "Dockerfile").read_text()
    for plugin in plugins:
        assert plugin in image
    assert "mosquitto-data:/mosquitto/data" in services()["mosquitto"]["volumes"]
    mounted = {volume_target(str(v)) for v in services()["mosquitto"]["volumes"]}
    assert {"/run/ehl-tls/fullchain.pem", "/run/ehl-tls/privkey.pem"} <= mounted


# -- the Caddyfile ------------------------------------------------------------------------


def caddy_sites() -> dict[str, list[str]]:
    """Each site block's address and its directive lines (top level of the Caddyfile; the
    global options block, which has no address, left out)."""
    sites: dict[str, list[str]] = {}
    depth = 0
    current: list[str] | None = None
    for raw in CADDYFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if depth == 0:
            assert line.endswith("{"), line
            address = line[:-1].strip()
            current = sites.setdefault(address, []) if address else None
        elif current is not None and not (depth == 1 and line == "}"):
            current.append(line)
        depth += line.count("{") - line.count("}")  # `{$VAR}` counts as both
    assert depth == 0, "unbalanced braces"
    return sites


def test_caddy_serves_the_api_and_grafana_over_https_from_compose_settings() -> None:
    sites = caddy_sites()
    assert set(sites) == {"{$EHL_API_PUBLIC_HOST}", "{$EHL_GRAFANA_PUBLIC_HOST}"}
    assert "reverse_proxy api:8000 {" in sites["{$EHL_API_PUBLIC_HOST}"]
    assert "reverse_proxy grafana:3000" in sites["{$EHL_GRAFANA_PUBLIC_HOST}"]
    caddy_variables = set(re.findall(r"\{\$([A-Z_0-9]+)\}", CADDYFILE.read_text()))
    assert caddy_variables <= set(services()["proxy"]["environment"])
    assert "./caddy/Caddyfile:/etc/caddy/Caddyfile:ro" in services()["proxy"]["volumes"]
    # the API's health URI is one it serves without a token
    assert "health_uri /openapi.json" in sites["{$EHL_API_PUBLIC_HOST}"]


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
    for path in (directory, plugins, plugin, partitions_plugin):
        path.chmod(0o755)
    internal_port, tls_port = free_port(), free_port()
    replacements = {
        "listener 1883": f"listener {internal_port} {LOOPBACK}",
        "listener 8883": f"listener {tls_port} {LOOPBACK}",
        "/mosquitto/certs/": f"{certs}/",
        "/mosquitto/data/": f"{data}/",
        "/usr/lib/ehealthlab/ehl_receive_stamp.so": str(plugin),
        "/usr/lib/ehealthlab/ehl_ingest_partitions.so": str(partitions_plugin),
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


# -- documentation -------------------------------------------------------------------------


def test_the_readme_links_the_operators_guide() -> None:
    assert "(docs/deployment.md)" in (ROOT / "README.md").read_text()
    docs = DOCS.read_text()
    for topic in ("Install", "First start", "Upgrade", "Rotate", "municipality", "Back up",
                  "Restore", "Health"):  # fmt: skip
        assert topic in docs, topic


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
