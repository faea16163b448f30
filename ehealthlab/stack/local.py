"""The local stack: one PostgreSQL and one Mosquitto per state directory, and the API and an
ingest worker when asked (`services.py`: background processes on record, stopped by `down`).

`LocalStack` starts and stops them: `ehealthlab stack up/down/status/env` drive it. What it
knows is in `<state dir>/stack.json` (state_file.py): where each server's directory is, its
port and the secrets generated for it (no secret has a default outside the local stack). Two
state directories are two independent stacks. A service given by the settings
(EHEALTHLAB_DATABASE_URL, EHEALTHLAB_MQTT_HOST) is "external": nothing is started for it and
its address comes from the settings (service_status.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from functools import partial

from pydantic import SecretStr

from ehealthlab.errors import StackError
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import (
    LOOPBACK,
    PortTakenError,
    free_port,
    listening_socket,
    start_on_free_port,
)
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, find_mosquitto, find_postgres, place_for
from ehealthlab.stack.service_status import (
    ServiceStatus,
    background_status,
    broker_is_external,
    database_is_external,
    format_status,
    mosquitto_status,
    postgres_status,
)
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
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.stack.state_file import (
    LOCK_FILE,
    STATE_FILE,
    TIMESCALE,
    MosquittoState,
    PostgresState,
    StackState,
    locked,
    mosquitto_broker,
    postgres_server,
    read_state,
    state_dir_of,
    write_state,
)


class LocalStack:
    """The stack of one state directory (`settings.state_dir`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = state_dir_of(settings)
        self.state_file = self.state_dir / STATE_FILE

    # -- the state file ------------------------------------------------------------------

    def load_state(self) -> StackState | None:
        """The recorded state, None when this directory has no stack yet."""
        return read_state(self.state_file)

    # -- commands --------------------------------------------------------------------------

    def up(self, *, timescale: bool = False) -> list[ServiceStatus]:
        """Start what is not external and not running; keep ports that are still free.

        `timescale` preloads TimescaleDB (and is remembered). Running servers are left alone.
        """
        state = self.load_state()
        local_database = not database_is_external(self.settings, state)
        local_broker = not broker_is_external(self.settings, state)
        # fail before touching anything when a program is missing
        if local_database:
            programs = find_postgres()
            if timescale:
                programs.require_extension(TIMESCALE)
                programs.require_library(TIMESCALE)
        if local_broker:
            find_mosquitto()
        notes: dict[str, str] = {}
        with locked(self.state_dir):
            state = self.load_state()
            if state is None:
                state = StackState(
                    stack_id=secrets.token_hex(8), patient_key=secrets.token_urlsafe(32)
                )
                write_state(self.state_file, state)
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
            write_state(self.state_file, state)  # the password is on record before initdb uses it
        recorded = state.postgresql
        server = postgres_server(recorded)
        if server.is_running():
            if timescale and not recorded.timescale:
                raise StackError(
                    "PostgreSQL runs without TimescaleDB: `ehealthlab stack down`, then "
                    "`ehealthlab stack up --timescale`"
                )
            return "already running"
        if timescale and not recorded.timescale:
            recorded.timescale = True
            server = postgres_server(recorded)
        start_on_free_port(server)
        recorded.port = server.port
        write_state(self.state_file, state)
        return "started"

    def _up_mosquitto(self, state: StackState) -> str:
        if state.mosquitto is None:
            account = ServiceAccount.for_server("mosquitto")
            state.mosquitto = MosquittoState(
                directory=place_for(account, self.state_dir / "mosquitto", key=state.stack_id),
                port=free_port(),
                admin_password=secrets.token_hex(16),
            )
            write_state(self.state_file, state)
        broker = mosquitto_broker(state.mosquitto)
        if broker.is_running():
            return "already running"
        start_on_free_port(broker)
        state.mosquitto.port = broker.port
        write_state(self.state_file, state)
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
        with locked(self.state_dir):
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
                    # bound here and handed over: no other process can take the port
                    # between our choosing it and the API's serving on it
                    with self._api_socket(api_port) as listener:
                        url = f"http://{LOOPBACK}:{listener.getsockname()[1]}"
                        fd = listener.fileno()
                        recorded = spawn(api_argv(fd), env, logs / "api.log", url, (fd,))
                state.services[name] = started[name] = recorded
                write_state(self.state_file, state)  # on record before waiting: `down` can stop it
                notes[name] = "started"
        for name, recorded in started.items():
            if name == "ingest":
                wait_ready(name, recorded, ready_file.exists)
            else:
                login = f"{recorded.address}/portal/login"
                wait_ready(name, recorded, partial(answers, login))
        return self.status(notes)

    def _api_socket(self, api_port: int | None) -> socket.socket:
        if api_port:
            return listening_socket(api_port)
        try:
            return listening_socket(self.settings.api_port)
        except PortTakenError:
            return listening_socket(0)

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
        with locked(self.state_dir):
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
            write_state(self.state_file, state)

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
        with locked(self.state_dir):
            state = self.load_state()
            if state is None:
                return self.status()
            self._stop_services(state, notes)
            servers: list[tuple[str, MosquittoBroker | PostgresServer]] = []
            if state.mosquitto is not None:
                servers.append(("mosquitto", mosquitto_broker(state.mosquitto)))
            if state.postgresql is not None:
                servers.append(("postgresql", postgres_server(state.postgresql)))
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
            postgres_status(self.settings, state, notes.get("postgresql", "")),
            mosquitto_status(self.settings, state, notes.get("mosquitto", "")),
        ]
        recorded = state.services if state is not None else {}
        for name in SERVICES:
            if name in recorded:
                statuses.append(background_status(name, recorded[name], notes.get(name, "")))
            elif name in notes:
                statuses.append(ServiceStatus(service=name, state="stopped", note=notes[name]))
        return statuses

    def status_lines(self) -> list[str]:
        return format_status(self.status())

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
