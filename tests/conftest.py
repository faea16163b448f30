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
from hypothesis import settings as hypothesis_settings

from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

pytest_plugins = ["servers"]

# In CI (CI=true) hypothesis replays a fixed sequence of examples, so a submission never fails
# on a draw the author never saw; locally it keeps exploring (and its database remembers).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

TIMESCALE_URL_VARIABLE = "EHEALTHLAB_TEST_TIMESCALE_URL"


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
