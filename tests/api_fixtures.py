"""The pieces every API test module builds the same way: a copy of the migrated template, the
settings over it and the session's broker, the application in a TestClient or served over
real HTTP. `conftest.py` turns them into the module-scoped `database_url`, `settings` and
`client` fixtures; a module that needs a variant (other options, a database per test, a real
port) calls these factories instead of writing its own copy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from fastapi.testclient import TestClient
from pydantic import SecretStr

from ehealthlab.settings import Settings

#: the patient key of the shared `settings` (pseudonyms in tests are computed with it)
API_PATIENT_KEY = "patient key of the API tests, long enough"
#: how long a served application may take to start: bounds a failure on a loaded machine only
START_DEADLINE_S = 120.0


def with_database(url: str, dbname: str) -> str:
    """The same server URL, pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def create_database(admin_url: str, *, template: str | None = None) -> str:
    name = "ehl_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if template is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def template_copy(admin_url: str, template: str) -> Iterator[str]:
    """A new database copied from the migrated `template` (municipalities loaded), dropped on
    exit: its URL."""
    name = create_database(admin_url, template=template)
    try:
        yield with_database(admin_url, name)
    finally:
        drop_database(admin_url, name)


def make_settings(database_url: str, broker: Any, state_dir: Path, **options: Any) -> Settings:
    """Settings for `database_url` and the session's broker (no local stack), with `options`
    overriding or adding any setting (validated as the environment's would be)."""
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "database_url": SecretStr(database_url),
        "mqtt_host": broker.host,
        "mqtt_port": broker.port,
        "mqtt_username": broker.admin_username,
        "mqtt_password": SecretStr(broker.admin_password),
        "patient_key": SecretStr(API_PATIENT_KEY),
    }
    values.update(options)
    return Settings(**values)


@contextmanager
def app_client(settings: Settings, **client_options: Any) -> Iterator[TestClient]:
    """The HTTP API over `settings`, started (pool, broker role, presence) until exit;
    `client_options` go to TestClient (e.g. an https `base_url`)."""
    # imported here: a module that needs no application does not import all of it
    from ehealthlab.api.app import create_app  # noqa: PLC0415

    with TestClient(create_app(settings), **client_options) as client:
        yield client


@contextmanager
def served(settings: Settings) -> Iterator[str]:
    """The HTTP API over `settings` served by uvicorn in a thread on 127.0.0.1 (real HTTP, for
    clients in other threads or processes): its base URL, until exit."""
    from ehealthlab.demo.in_process import api_in_thread  # noqa: PLC0415

    with api_in_thread(settings, START_DEADLINE_S) as url:
        yield url
