"""Real servers for the test session, as a pytest plugin (`pytest_plugins = ["servers"]`).

`postgres_server`: a started `PostgresServer` (fsync off) for tests to create databases on:
`.url(dbname)`, `.admin_url` (the `postgres` database), `.host`, `.port`, `.user`,
`.password`.

`mosquitto_broker`: a started `MosquittoBroker` that refuses anonymous clients: `.host`,
`.port`, `.admin_username`, `.admin_password` (the dynamic-security admin), and `.stop()` /
`.start()` to restart it on the same port with its persistence. A test that stops it starts
it again.

Both live in pytest's temporary directory, or, as root when their system user cannot reach
it, in /var/tmp; both are stopped and deleted at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ehealthlab.errors import MissingDependencyError
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import (
    ServiceAccount,
    find_mosquitto,
    find_postgres,
    place_for,
)


def _server_directory(tmp_path_factory: pytest.TempPathFactory, name: str, user: str) -> Path:
    return place_for(ServiceAccount.for_server(user), tmp_path_factory.mktemp(name) / "server")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    try:
        programs = find_postgres()
    except MissingDependencyError as exc:
        pytest.fail(str(exc), pytrace=False)
    server = PostgresServer(
        _server_directory(tmp_path_factory, "postgres", "postgres"),
        fsync=False,
        programs=programs,
    )
    try:
        start_on_free_port(server)
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    try:
        programs = find_mosquitto()
    except MissingDependencyError as exc:
        pytest.fail(str(exc), pytrace=False)
    broker = MosquittoBroker(
        _server_directory(tmp_path_factory, "mosquitto", "mosquitto"), programs=programs
    )
    try:
        start_on_free_port(broker)
        yield broker
    finally:
        broker.remove()
