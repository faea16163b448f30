"""The production deployment's Compose file (deploy/compose.yaml), checked as far as a
machine without a Docker engine allows: parsed with PyYAML and checked against the
repository (files it mounts and copies, variables it reads and the operators' guide
documents, images, ports, healthchecks, the commands it runs parsed by `ehealthlab`'s own
parser), and the README linking the operators' guide.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import distribution, version
from pathlib import Path
from typing import Any

from deploy_fixtures import (
    DEPLOY,
    DOCS,
    ENV_EXAMPLE,
    ROOT,
    VARIABLE,
    compose,
    services,
    volume_source,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ehealthlab.cli import build_parser

#: the host ports a service may publish on every interface: Caddy's HTTPS, devices' MQTT/TLS
PUBLIC_PORTS = {("proxy", 443), ("mosquitto", 8883)}


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


# -- documentation -------------------------------------------------------------------------


def test_the_readme_links_the_operators_guide() -> None:
    assert "(docs/deployment.md)" in (ROOT / "README.md").read_text()
    docs = DOCS.read_text()
    for topic in ("Install", "First start", "Upgrade", "Rotate", "municipality", "Back up",
                  "Restore", "Health"):  # fmt: skip
        assert topic in docs, topic
