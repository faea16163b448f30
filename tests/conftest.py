"""Fixtures shared by the suite: real servers come from the `servers` plugin; this file
turns them into databases for tests of the store, on both physical forms.

The plain PostgreSQL form always runs, on a private server started for the session. The
TimescaleDB form runs too when EHEALTHLAB_TEST_TIMESCALE_URL names a server with the
extension loaded (a superuser URL: tests create and drop databases on it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from ehealthlab.settings import Settings
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

pytest_plugins = ["servers"]

# In CI (CI=true) hypothesis replays a fixed sequence of examples, so a submission never fails
# on a draw the author never saw; locally it keeps exploring (and its database remembers).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

TIMESCALE_URL_VARIABLE = "EHEALTHLAB_TEST_TIMESCALE_URL"
#: the patient key of the `settings` fixture
API_PATIENT_KEY = "patient key of the API tests, long enough"


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


@pytest.fixture(scope="session")
def plain_admin_url(postgres_server) -> str:
    return postgres_server.url("postgres")


@pytest.fixture(scope="session")
def migrated_template(plain_admin_url: str) -> str:
    """A database migrated once per session (plain form) that tests copy as a template."""
    name = create_database(plain_admin_url)
    with psycopg.connect(with_database(plain_admin_url, name), autocommit=True) as conn:
        migrate(conn, "plain")
        load_municipalities(conn)
    return name


@pytest.fixture(params=["plain", "timescale"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A freshly migrated store of each physical form (TimescaleDB only when available)."""
    if request.param == "plain":
        admin_url = request.getfixturevalue("plain_admin_url")
        name = create_database(admin_url, template=request.getfixturevalue("migrated_template"))
    else:
        admin_url = os.environ.get(TIMESCALE_URL_VARIABLE, "")
        if not admin_url:
            pytest.skip(f"{TIMESCALE_URL_VARIABLE} is not set: TimescaleDB form not tested")
        name = create_database(admin_url)
        with psycopg.connect(with_database(admin_url, name), autocommit=True) as conn:
            migrate(conn, "timescale")
            load_municipalities(conn)
    try:
        yield with_database(admin_url, name)
    finally:
        drop_database(admin_url, name)


@pytest.fixture
def empty_database_url(plain_admin_url: str) -> Iterator[str]:
    """An empty database on the plain server, for tests of migrations themselves."""
    name = create_database(plain_admin_url)
    try:
        yield with_database(plain_admin_url, name)
    finally:
        drop_database(plain_admin_url, name)


# -- one application per test module, over its own copy of the migrated template -----------
# A module may override any of these (several older modules still define their own).


@pytest.fixture(scope="module")
def database_url(plain_admin_url: str, migrated_template: str) -> Iterator[str]:
    """The module's own migrated database, with the municipalities loaded."""
    name = create_database(plain_admin_url, template=migrated_template)
    yield with_database(plain_admin_url, name)
    drop_database(plain_admin_url, name)


@pytest.fixture(scope="module")
def settings(database_url, mosquitto_broker, tmp_path_factory) -> Settings:
    """Settings for the module's database and the session's broker (no local stack)."""
    b = mosquitto_broker
    return Settings(
        state_dir=tmp_path_factory.mktemp("no-stack"),
        database_url=SecretStr(database_url),
        mqtt_host=b.host,
        mqtt_port=b.port,
        mqtt_username=b.admin_username,
        mqtt_password=SecretStr(b.admin_password),
        patient_key=SecretStr(API_PATIENT_KEY),
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    """The HTTP API over `settings`, started (pool, broker role, presence) for the module."""
    # imported here: a module that needs no application does not import all of it
    from ehealthlab.api.app import create_app  # noqa: PLC0415

    with TestClient(create_app(settings)) as test_client:
        yield test_client
