"""What runs where in the local stack, as `ehealthlab stack up/down/status` report it.

A server the settings name (EHEALTHLAB_DATABASE_URL, EHEALTHLAB_MQTT_HOST) that is not the
stack's own is "external": nothing is started for it, its address comes from the settings and
it is not probed. The stack's own servers and background services are probed (pid files,
processes); `format_status` only lays the answers out as a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from ehealthlab.settings import Settings
from ehealthlab.stack.ports import LOOPBACK
from ehealthlab.stack.services import BackgroundState, is_running
from ehealthlab.stack.state_file import StackState, mosquitto_broker, postgres_server

ServiceState = Literal["running", "stopped", "not created", "external"]


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What runs where, for one service."""

    #: postgresql, mosquitto, or a background service (api, ingest)
    service: str
    state: ServiceState
    host: str | None = None
    port: int | None = None
    pid: int | None = None
    directory: Path | None = None
    #: what the last command did to it ("started", "already running", "stopped")
    note: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def address(self) -> str:
        if self.host is None:
            return "-"
        return f"{self.host}:{self.port}" if self.port is not None else self.host


def format_status(statuses: list[ServiceStatus]) -> list[str]:
    """A small aligned table, header first."""
    rows = [("service", "state", "address", "pid", "directory or log")]
    rows += [
        (
            s.service,
            s.note or s.state,
            s.address,
            str(s.pid) if s.pid is not None else "-",
            str(s.directory) if s.directory is not None else "-",
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ]


def database_is_external(settings: Settings, state: StackState | None) -> bool:
    """Settings name a database, and it is not this stack's own (as `stack env` prints)."""
    if settings.database_url is None:
        return False
    if state is None or state.postgresql is None:
        return True
    parts = urlsplit(settings.database_url.get_secret_value())
    try:
        return (parts.hostname, parts.port) != (LOOPBACK, state.postgresql.port)
    except ValueError:  # a garbled port: not ours
        return True


def broker_is_external(settings: Settings, state: StackState | None) -> bool:
    """Settings name a broker, and it is not this stack's own (as `stack env` prints)."""
    if settings.mqtt_host is None:
        return False
    if state is None or state.mosquitto is None:
        return True
    return (settings.mqtt_host, settings.mqtt_port) != (
        LOOPBACK,
        state.mosquitto.port,
    )


def postgres_status(settings: Settings, state: StackState | None, note: str) -> ServiceStatus:
    if settings.database_url is not None and database_is_external(settings, state):
        parts = urlsplit(settings.database_url.get_secret_value())
        try:
            port = parts.port or 5432
        except ValueError:  # a garbled port: the driver will say what is wrong
            port = None
        return ServiceStatus(
            service="postgresql",
            state="external",
            host=parts.hostname or "localhost",
            port=port,
        )
    if state is None or state.postgresql is None:
        return ServiceStatus(service="postgresql", state="not created", note=note)
    server = postgres_server(state.postgresql)
    pid = server.pid()
    return ServiceStatus(
        service="postgresql",
        state="running" if pid is not None else "stopped",
        host=server.host,
        port=server.port,
        pid=pid,
        directory=server.directory,
        note=note,
    )


def mosquitto_status(settings: Settings, state: StackState | None, note: str) -> ServiceStatus:
    if settings.mqtt_host is not None and broker_is_external(settings, state):
        return ServiceStatus(
            service="mosquitto",
            state="external",
            host=settings.mqtt_host,
            port=settings.mqtt_port,
        )
    if state is None or state.mosquitto is None:
        return ServiceStatus(service="mosquitto", state="not created", note=note)
    broker = mosquitto_broker(state.mosquitto)
    pid = broker.pid()
    return ServiceStatus(
        service="mosquitto",
        state="running" if pid is not None else "stopped",
        host=broker.host,
        port=broker.port,
        pid=pid,
        directory=broker.directory,
        note=note,
    )


def background_status(name: str, recorded: BackgroundState, note: str) -> ServiceStatus:
    host = port = None
    if recorded.address is not None:
        parts = urlsplit(recorded.address)
        host, port = parts.hostname, parts.port
    running = is_running(recorded)
    return ServiceStatus(
        service=name,
        state="running" if running else "stopped",
        host=host,
        port=port,
        pid=recorded.pid if running else None,
        directory=recorded.log,
        note=note,
    )
