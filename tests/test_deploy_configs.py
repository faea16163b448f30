"""The production deployment's Mosquitto configuration and Caddyfile in deploy/, read for the
directives the deployment relies on: dynamic security, the plugins, persistence, limits as
the local stack's, TLS for devices; the API and Grafana served over HTTPS."""

from __future__ import annotations

import re
from pathlib import Path

from deploy_fixtures import CADDYFILE, DEPLOY, MOSQUITTO_CONF, services, volume_target

from ehealthlab.contract import MAX_PACKET_BYTES
from ehealthlab.stack.mosquitto import MAX_QUEUED_BYTES

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
        "ehl_journal.so",
        "ehl_ingest_partitions.so",
        "mosquitto_dynamic_security.so",
    ]
    assert settings["plugin_opt_config_file"] == "/mosquitto/data/dynamic-security.json"
    assert settings["plugin_opt_journal_dir"] == "/mosquitto/data/journal"
    assert settings["plugin_opt_persistence_file"] == "/mosquitto/data/mosquitto.db"
    # a journal segment outlives the broker's next save (autosave_interval) and one more
    keep = int(settings["plugin_opt_journal_keep_seconds"])
    assert keep >= 2 * int(settings["autosave_interval"]) + int(
        settings["plugin_opt_journal_segment_seconds"]
    )
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
