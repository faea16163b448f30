"""The production deployment's files in deploy/, as its tests read them: where they are, and
the Compose file parsed with PyYAML (its services, the variables it reads, the sources and
targets of the volumes it mounts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

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


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def volume_source(entry: str) -> str:
    """The source of a short-syntax volume (a variable's `:?message` holds colons)."""
    variable = VARIABLE.match(entry)
    return variable.group(0) if variable else entry.split(":", 1)[0]


def volume_target(entry: str) -> str:
    return entry[len(volume_source(entry)) + 1 :].split(":", 1)[0]
