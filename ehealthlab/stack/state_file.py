"""The local stack's record, `<state dir>/stack.json`: what it holds and how it is kept.

Everything the stack knows is in this file (mode 0600): where each server's directory is, its
port and the secrets generated for it (no secret has a default outside the local stack), and
the background services it started. `up`, `down` and the services (local.py) change it under
the state directory's lock; the commands that complete their settings from the stack
(stack_settings.py) and `ehealthlab stack status` (service_status.py) only read it. The
servers it records are made back into `PostgresServer` and `MosquittoBroker` here.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from ehealthlab.errors import StackError
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.services import BackgroundState

STATE_FILE = "stack.json"
LOCK_FILE = ".lock"
TIMESCALE = "timescaledb"


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


def state_dir_of(settings: Settings) -> Path:
    """The stack's directory: `settings.state_dir`, made absolute."""
    return settings.state_dir.expanduser().resolve()


def read_state(state_file: Path) -> StackState | None:
    """The recorded state, None when this directory has no stack yet."""
    try:
        text = state_file.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StackError(f"cannot read {state_file}: {exc.strerror}") from None
    try:
        return StackState.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise StackError(
            f"{state_file} is not a stack state ({where}: {first['msg']}); "
            "remove it to start afresh"
        ) from None


def write_state(state_file: Path, state: StackState) -> None:
    """Write atomically, readable by us only: it holds passwords and the patient key."""
    temporary = state_file.with_name(f".{STATE_FILE}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(state.model_dump_json(indent=2) + "\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, state_file)


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """One `up` or `down` at a time per state directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- the servers on record ----------------------------------------------------------------


def postgres_server(recorded: PostgresState) -> PostgresServer:
    return PostgresServer(
        recorded.directory,
        port=recorded.port,
        password=recorded.password,
        user=recorded.user,
        database=recorded.database,
        preload_libraries=(TIMESCALE,) if recorded.timescale else (),
    )


def mosquitto_broker(recorded: MosquittoState) -> MosquittoBroker:
    return MosquittoBroker(
        recorded.directory,
        port=recorded.port,
        admin_username=recorded.admin_username,
        admin_password=recorded.admin_password,
    )
