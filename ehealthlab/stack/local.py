"""The local stack: one PostgreSQL and one Mosquitto per state directory, and the API and an
ingest worker when asked (`services.py`: background processes on record, stopped by `down`).

Everything the stack knows is in `<state dir>/stack.json` (mode 0600): where each server's
directory is, its port and the secrets generated for it (no secret has a default outside the
local stack). Two state directories are two independent stacks. A service given by the
settings (EHEALTHLAB_DATABASE_URL, EHEALTHLAB_MQTT_HOST) is "external": nothing is started
for it and its address comes from the settings.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr, ValidationError

from ehealthlab.errors import StackError
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import LOOPBACK, free_port, port_is_free, start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, find_mosquitto, find_postgres, place_for
from ehealthlab.stack.services import (
    SERVICES,
    BackgroundState,
    answers,
    api_argv,
    ingest_argv,
    is_running,
    spawn,
    stop,
    wait_ready,
)

STATE_FILE = "stack.json"
LOCK_FILE = ".lock"
TIMESCALE = "timescaledb"

ServiceState = Literal["running", "stopped", "not created", "external"]


class PostgresState(BaseModel):
    """What the stack recorded about its PostgreSQL."""

    directory: Path
    port: int
    user: str = "ehealthlab"
    password: str
    database: str = "ehealthlab"
    #: started with TimescaleDB preloaded; sticky, since its databases may need it
    timescale: bool = False


class MosquittoState(BaseModel):
    """What the stack recorded about its Mosquitto."""

    directory: Path
    port: int
    admin_username: str = "ehealthlab-admin"
    admin_password: str


class StackState(BaseModel):
    """The state file: secrets and places of one local stack."""

    version: Literal[1] = 1
    #: random, so a state directory made afresh at the same path gets fresh server directories
    stack_id: str
    patient_key: str
    postgresql: PostgresState | None = None
    mosquitto: MosquittoState | None = None
    #: background services (api, ingest) started by `start_services`
    services: dict[str, BackgroundState] = {}


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


class LocalStack:
    """The stack of one state directory (`settings.state_dir`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.expanduser().resolve()
        self.state_file = self.state_dir / STATE_FILE

    # -- the state file ------------------------------------------------------------------

    def load_state(self) -> StackState | None:
        """The recorded state, None when this directory has no stack yet."""
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StackError(f"cannot read {self.state_file}: {exc.strerror}") from None
        try:
            return StackState.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "file"
            raise StackError(
                f"{self.state_file} is not a stack state ({where}: {first['msg']}); "
                "remove it to start afresh"
            ) from None

    def _save_state(self, state: StackState) -> None:
        """Write atomically, readable by us only: it holds passwords and the patient key."""
        temporary = self.state_file.with_name(f".{STATE_FILE}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(state.model_dump_json(indent=2) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.state_file)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up` or `down` at a time per state directory."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- servers from the state ----------------------------------------------------------

    @staticmethod
    def _postgres(recorded: PostgresState) -> PostgresServer:
        return PostgresServer(
            recorded.directory,
            port=recorded.port,
            password=recorded.password,
            user=recorded.user,
            database=recorded.database,
            preload_libraries=(TIMESCALE,) if recorded.timescale else (),
        )

    @staticmethod
    def _mosquitto(recorded: MosquittoState) -> MosquittoBroker:
        return MosquittoBroker(
            recorded.directory,
            port=recorded.port,
            admin_username=recorded.admin_username,
            admin_password=recorded.admin_password,
        )

    # -- commands --------------------------------------------------------------------------

    def up(self, *, timescale: bool = False) -> list[ServiceStatus]:
        """Start what is not external and not running; keep ports that are still free.

        `timescale` preloads TimescaleDB (and is remembered). Running servers are left alone.
        """
        state = self.load_state()
        local_database = not self._database_is_external(state)
        local_broker = not self._broker_is_external(state)
        # fail before touching anything when a program is missing
        if local_database:
            programs = find_postgres()
            if timescale:
                programs.require_extension(TIMESCALE)
                programs.require_library(TIMESCALE)
        if local_broker:
            find_mosquitto()
        notes: dict[str, str] = {}
        with self._locked():
            state = self.load_state()
            if state is None:
                state = StackState(
                    stack_id=secrets.token_hex(8), patient_key=secrets.token_urlsafe(32)
                )
                self._save_state(state)
            if local_database:
                notes["postgresql"] = self._up_postgres(state, timescale=timescale)
            if local_broker:
                notes["mosquitto"] = self._up_mosquitto(state)
        return self.status(notes)

    def _up_postgres(self, state: StackState, *, timescale: bool) -> str:
        if state.postgresql is None:
            account = ServiceAccount.for_server("postgres")
            state.postgresql = PostgresState(
                directory=place_for(account, self.state_dir / "postgres", key=state.stack_id),
                port=free_port(),
                password=secrets.token_hex(16),
                timescale=timescale,
            )
            self._save_state(state)  # the password is on record before initdb uses it
        recorded = state.postgresql
        server = self._postgres(recorded)
        if server.is_running():
            if timescale and not recorded.timescale:
                raise StackError(
                    "PostgreSQL runs without TimescaleDB: `ehealthlab stack down`, then "
                    "`ehealthlab stack up --timescale`"
                )
            return "already running"
        if timescale and not recorded.timescale:
            recorded.timescale = True
            server = self._postgres(recorded)
        start_on_free_port(server)
        recorded.port = server.port
        self._save_state(state)
        return "started"

    def _up_mosquitto(self, state: StackState) -> str:
        if state.mosquitto is None:
            account = ServiceAccount.for_server("mosquitto")
            state.mosquitto = MosquittoState(
                directory=place_for(account, self.state_dir / "mosquitto", key=state.stack_id),
                port=free_port(),
                admin_password=secrets.token_hex(16),
            )
            self._save_state(state)
        broker = self._mosquitto(state.mosquitto)
        if broker.is_running():
            return "already running"
        start_on_free_port(broker)
        state.mosquitto.port = broker.port
        self._save_state(state)
        return "started"

    def start_services(self, *, api_port: int | None = None) -> list[ServiceStatus]:
        """Start the API (with the portal) and an ingest worker in the background, unless they
        run already; return when the API answers and ingest is subscribed.

        They read the stack (or the external servers) from the environment, as `ehealthlab
        api` and `ehealthlab ingest` do, and keep running until `down`. The API listens on
        `api_port`, else EHEALTHLAB_API_PORT when free, else a free port.
        """
        if self.load_state() is None:
            raise StackError(f"no local stack in {self.state_dir}: `ehealthlab stack up` first")
        env = {**os.environ, "EHEALTHLAB_STATE_DIR": str(self.state_dir)}
        logs = self.state_dir / "logs"
        ready_file = self.state_dir / "ingest.ready"
        notes: dict[str, str] = {}
        started: dict[str, BackgroundState] = {}
        with self._locked():
            state = self.load_state()
            assert state is not None  # noqa: S101 - it was there above, and `down` holds the lock
            for name in SERVICES:
                recorded = state.services.get(name)
                if recorded is not None and is_running(recorded):
                    notes[name] = "already running"
                    continue
                if name == "ingest":
                    ready_file.unlink(missing_ok=True)
                    recorded = spawn(ingest_argv(ready_file), env, logs / "ingest.log", None)
                else:
                    port = api_port or self._api_port()
                    url = f"http://{LOOPBACK}:{port}"
                    recorded = spawn(api_argv(port), env, logs / "api.log", url)
                state.services[name] = started[name] = recorded
                self._save_state(state)  # on record before waiting: `down` can stop it
                notes[name] = "started"
        for name, recorded in started.items():
            if name == "ingest":
                wait_ready(name, recorded, ready_file.exists)
            else:
                login = f"{recorded.address}/portal/login"
                wait_ready(name, recorded, partial(answers, login))
        return self.status(notes)

    def _api_port(self) -> int:
        wanted = self.settings.api_port
        return wanted if port_is_free(wanted) else free_port()

    def api_url(self) -> str | None:
        """Where the background API answers, when it runs."""
        state = self.load_state()
        recorded = state.services.get("api") if state is not None else None
        if recorded is None or not is_running(recorded):
            return None
        return recorded.address

    def stop_services(self) -> dict[str, str]:
        """Stop the background services (harmless when stopped); they leave the record."""
        notes: dict[str, str] = {}
        with self._locked():
            state = self.load_state()
            if state is None:
                return notes
            self._stop_services(state, notes)
        return notes

    def _stop_services(self, state: StackState, notes: dict[str, str]) -> None:
        for name in reversed(SERVICES):
            recorded = state.services.get(name)
            if recorded is None:
                continue
            notes[name] = "stopped" if stop(recorded) else "was not running"
            del state.services[name]
            self._save_state(state)

    def _remove_service_files(self) -> None:
        logs = self.state_dir / "logs"
        for name in SERVICES:
            (logs / f"{name}.log").unlink(missing_ok=True)
        if logs.is_dir() and not any(logs.iterdir()):
            logs.rmdir()
        (self.state_dir / "ingest.ready").unlink(missing_ok=True)
        shutil.rmtree(self.settings.exports_dir, ignore_errors=True)  # the database's data

    def down(self, *, purge: bool = False) -> list[ServiceStatus]:
        """Stop this stack's background services and servers (harmless when stopped); `purge`
        also deletes their data.

        The servers on record are ours to stop even if the settings now point elsewhere.
        """
        if self.load_state() is None:
            return self.status()
        notes: dict[str, str] = {}
        with self._locked():
            state = self.load_state()
            if state is None:
                return self.status()
            self._stop_services(state, notes)
            servers: list[tuple[str, MosquittoBroker | PostgresServer]] = []
            if state.mosquitto is not None:
                servers.append(("mosquitto", self._mosquitto(state.mosquitto)))
            if state.postgresql is not None:
                servers.append(("postgresql", self._postgres(state.postgresql)))
            for service, server in servers:
                if server.is_running():
                    notes[service] = "stopped"
                if purge:
                    server.remove()
                    notes[service] = "removed"
                else:
                    server.stop()
            if purge:
                # only what is on record: the state directory may hold the user's own files
                self._remove_service_files()
                self.state_file.unlink(missing_ok=True)
        if purge:
            (self.state_dir / LOCK_FILE).unlink(missing_ok=True)
            if self.state_dir.is_dir() and not any(self.state_dir.iterdir()):
                self.state_dir.rmdir()
        return self.status(notes)

    def status(self, notes: dict[str, str] | None = None) -> list[ServiceStatus]:
        """What runs where: PostgreSQL, Mosquitto, then the background services on record (or
        just stopped, with their note)."""
        notes = notes or {}
        state = self.load_state()
        statuses = [
            self._postgres_status(state, notes.get("postgresql", "")),
            self._mosquitto_status(state, notes.get("mosquitto", "")),
        ]
        recorded = state.services if state is not None else {}
        for name in SERVICES:
            if name in recorded:
                statuses.append(_background_status(name, recorded[name], notes.get(name, "")))
            elif name in notes:
                statuses.append(ServiceStatus(service=name, state="stopped", note=notes[name]))
        return statuses

    def status_lines(self) -> list[str]:
        return format_status(self.status())

    def _database_is_external(self, state: StackState | None) -> bool:
        """Settings name a database, and it is not this stack's own (as `stack env` prints)."""
        if self.settings.database_url is None:
            return False
        if state is None or state.postgresql is None:
            return True
        parts = urlsplit(self.settings.database_url.get_secret_value())
        try:
            return (parts.hostname, parts.port) != (LOOPBACK, state.postgresql.port)
        except ValueError:  # a garbled port: not ours
            return True

    def _broker_is_external(self, state: StackState | None) -> bool:
        """Settings name a broker, and it is not this stack's own (as `stack env` prints)."""
        if self.settings.mqtt_host is None:
            return False
        if state is None or state.mosquitto is None:
            return True
        return (self.settings.mqtt_host, self.settings.mqtt_port) != (
            LOOPBACK,
            state.mosquitto.port,
        )

    def _postgres_status(self, state: StackState | None, note: str) -> ServiceStatus:
        if self.settings.database_url is not None and self._database_is_external(state):
            parts = urlsplit(self.settings.database_url.get_secret_value())
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
        server = self._postgres(state.postgresql)
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

    def _mosquitto_status(self, state: StackState | None, note: str) -> ServiceStatus:
        if self.settings.mqtt_host is not None and self._broker_is_external(state):
            return ServiceStatus(
                service="mosquitto",
                state="external",
                host=self.settings.mqtt_host,
                port=self.settings.mqtt_port,
            )
        if state is None or state.mosquitto is None:
            return ServiceStatus(service="mosquitto", state="not created", note=note)
        broker = self._mosquitto(state.mosquitto)
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

    def env(self) -> dict[str, str]:
        """The EHEALTHLAB_* variables that point a shell at this stack (or the external one)."""
        completed = settings_with_stack(self.settings)
        if completed.database_url is None or completed.mqtt_host is None:
            raise StackError(
                f"no local stack in {self.state_dir}: start it with `ehealthlab stack up`"
            )
        values: dict[str, str | int | SecretStr | None] = {
            "EHEALTHLAB_DATABASE_URL": completed.database_url,
            "EHEALTHLAB_MQTT_HOST": completed.mqtt_host,
            "EHEALTHLAB_MQTT_PORT": completed.mqtt_port,
            "EHEALTHLAB_MQTT_USERNAME": completed.mqtt_username,
            "EHEALTHLAB_MQTT_PASSWORD": completed.mqtt_password,
            "EHEALTHLAB_PATIENT_KEY": completed.patient_key,
            "EHEALTHLAB_STATE_DIR": str(self.state_dir),
        }
        return {
            name: value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            for name, value in values.items()
            if value is not None
        }


def _background_status(name: str, recorded: BackgroundState, note: str) -> ServiceStatus:
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


def settings_with_stack(settings: Settings) -> Settings:
    """`settings` completed from the local stack's state file, for what the environment left
    unset, so `ehealthlab db migrate` works right after `ehealthlab stack up`.

    The broker's fields are taken only when EHEALTHLAB_MQTT_HOST is unset (an external broker
    does not get our admin password); without a state file the settings come back unchanged.
    """
    state = LocalStack(settings).load_state()
    if state is None:
        return settings
    update: dict[str, object] = {}
    if settings.database_url is None and state.postgresql is not None:
        update["database_url"] = SecretStr(LocalStack._postgres(state.postgresql).url())
    if settings.mqtt_host is None and state.mosquitto is not None:
        update["mqtt_host"] = LOOPBACK
        if settings.mqtt_port is None:
            update["mqtt_port"] = state.mosquitto.port
        if settings.mqtt_username is None:
            update["mqtt_username"] = state.mosquitto.admin_username
        if settings.mqtt_password is None:
            update["mqtt_password"] = SecretStr(state.mosquitto.admin_password)
    if settings.patient_key is None:
        update["patient_key"] = SecretStr(state.patient_key)
    return settings.model_copy(update=update)
