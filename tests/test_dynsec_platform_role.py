"""Several of the platform's processes giving its client the platform role at once, on a
broker that has no such role yet: the API's workers starting together, ingest beside them.

The broker disconnects every connection of a client whose roles change (so that its new
rights apply), the other processes' included, and refuses a role that another process has
just created; each process must still end with the role given, not fail its start.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehealthlab.gateway.dynsec import PLATFORM_ROLE, RESPONSE_TOPIC, DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, ConnectionLostError, MqttConnection
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.programs import ServiceAccount, place_for

PROCESSES = 4
WAIT_S = 60.0  # bounds a failure only


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of its own: no platform role until a test gives it."""
    broker = MosquittoBroker(place_for(ServiceAccount.for_server("mosquitto"), tmp_path / "mq"))
    start_on_free_port(broker)
    yield broker
    broker.remove()


@pytest.mark.parametrize("attempt", range(3))
def test_processes_giving_the_platform_role_at_once_all_succeed(
    fresh_broker: MosquittoBroker, attempt: int
) -> None:
    b = fresh_broker
    address = BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)
    together = threading.Barrier(PROCESSES)
    failures: list[BaseException] = []

    def start_one() -> None:
        try:
            with DynamicSecurity(address) as dynsec:
                together.wait(WAIT_S)
                dynsec.ensure_platform_role(b.admin_username)
        except BaseException as exc:
            failures.append(exc)

    starts = [threading.Thread(target=start_one) for _ in range(PROCESSES)]
    for start in starts:
        start.start()
    for start in starts:
        start.join(WAIT_S)
    assert not any(start.is_alive() for start in starts)
    assert failures == []
    with DynamicSecurity(address) as dynsec:
        client = dynsec.get_client(b.admin_username) or {}
        assert PLATFORM_ROLE in {r.get("rolename") for r in client.get("roles", [])}
        assert dynsec.get_role(PLATFORM_ROLE) is not None


KICKING_S = 0.6  # shorter than the administrative client's attempts to connect (about 1 s)


def test_a_connection_dropped_as_it_is_made_is_made_again(fresh_broker: MosquittoBroker) -> None:
    """Another process giving the platform client a role drops every connection of that
    client, one being made included: the API's second worker failed its start that way
    (its subscription to the answers lost), and uvicorn then stopped the whole API."""
    b = fresh_broker
    address = BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)
    kicker = BrokerAddress(b.host, b.port, "kicker", secrets.token_hex(8))
    with DynamicSecurity(address) as dynsec:
        dynsec.execute(
            {"command": "createRole", "rolename": "nothing", "acls": []},
            {
                "command": "createClient",
                "username": kicker.username,
                "password": kicker.password,
                "roles": [{"rolename": "admin"}],
            },
        )
    kicks = 0
    stop = threading.Event()
    failures: list[BaseException] = []

    def kick() -> None:
        """Change the platform client's roles, which drops its connections, again and again."""
        nonlocal kicks
        try:
            with DynamicSecurity(kicker) as other:
                deadline = time.monotonic() + KICKING_S
                while time.monotonic() < deadline and not stop.is_set():
                    for command in ("addClientRole", "removeClientRole"):
                        role = {"username": b.admin_username, "rolename": "nothing"}
                        other.execute({"command": command, **role})
                        kicks += 1
        except BaseException as exc:
            failures.append(exc)

    def dropped_once() -> bool:
        """One connection made as the constructor makes it, but not made again."""
        bare = MqttConnection(address, f"bare-{uuid.uuid4().hex[:8]}")
        try:
            bare.connect()
            bare.subscribe(RESPONSE_TOPIC)
        except ConnectionLostError:
            return True
        finally:
            bare.close()
        return False

    kicking = threading.Thread(target=kick)
    kicking.start()
    drops = made = 0
    try:
        while kicks == 0 and kicking.is_alive():
            time.sleep(0.001)
        while drops == 0 and kicking.is_alive():  # the broker does drop them
            drops += dropped_once()
        while kicking.is_alive():  # and each made meanwhile is made all the same
            DynamicSecurity(address).__exit__(None, None, None)
            made += 1
    finally:
        stop.set()
        kicking.join(WAIT_S)
    print(f"{drops} dropped, then {made} made, during {kicks} kicks")
    assert failures == []
    assert kicks > 0 and drops > 0 and made > 0
