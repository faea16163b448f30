"""Device presence: what the status topic says, recorded in the registry.

`record` against a real PostgreSQL with hand-made messages (retained or live, readable or
not); then the presence thread against a real Mosquitto: a device's retained `online` and
its Last Will, a presence started after the fact, a broker restart, a clean stop.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import create_database, drop_database, with_database
from psycopg_pool import ConnectionPool

from ehealthlab.contract.topics import readings_topic, status_topic
from ehealthlab.errors import AuthenticationError, ServiceUnavailableError
from ehealthlab.gateway import registry
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.gateway.presence import Presence, record
from ehealthlab.mqtt import BrokerAddress, MqttConnection, MqttError, ReceivedMessage, Will

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
ONLINE, OFFLINE = b'{"state": "online"}', b'{"state": "offline"}'


@pytest.fixture(scope="module")
def database_url(plain_admin_url, migrated_template):
    name = create_database(plain_admin_url, template=migrated_template)
    yield with_database(plain_admin_url, name)
    drop_database(plain_admin_url, name)


@pytest.fixture(scope="module")
def pool(database_url):
    with ConnectionPool(database_url, min_size=1, max_size=4, kwargs={"autocommit": True},
                        open=True) as opened:  # fmt: skip
        yield opened


@pytest.fixture(scope="module")
def platform(mosquitto_broker) -> BrokerAddress:
    b = mosquitto_broker
    address = BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)
    with DynamicSecurity(address) as dynsec:
        dynsec.ensure_platform_role(b.admin_username)
    return address


def new_device(pool) -> str:
    device_id = f"dev-{uuid.uuid4().hex[:10]}"
    with pool.connection() as conn, conn.transaction():
        startup = registry.create_organisation(conn, "startup", f"start-up {device_id}")
        registry.insert_device(conn, organisation_id=startup.id, device_id=device_id,
                               device_type="thermometer", model="T", serial=device_id,
                               firmware=None)  # fmt: skip
    return device_id


def state_of(pool, device_id: str):
    with pool.connection() as conn:
        return conn.execute(
            "SELECT status, status_at, last_seen_at FROM devices WHERE device_id = %s",
            (device_id,),
        ).fetchone()


def events_of(pool, device_id: str):
    with pool.connection() as conn:
        return conn.execute(
            "SELECT status, retained FROM device_status_events WHERE device_id = %s ORDER BY id",
            (device_id,),
        ).fetchall()


def message(device_id: str, payload: bytes, at: datetime, *, retain: bool = False,
            topic: str | None = None) -> ReceivedMessage:  # fmt: skip
    return ReceivedMessage(topic or status_topic(device_id), payload, 1, retain, 1, at)


def wait_until(condition, timeout: float = 30.0) -> bool:
    """Poll `condition`; the timeout only bounds a failure (a loaded machine is slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- record: the rules, message by message ---------------------------------------------------


def test_live_messages_set_status_and_times_retained_ones_keep_the_times(pool):
    device = new_device(pool)
    t1, t2, t3, t4 = (T0 + timedelta(minutes=m) for m in (1, 2, 3, 4))
    steps = [
        # (message, expected (status, status_at, last_seen_at))
        (message(device, ONLINE, t1), ("online", t1, t1)),
        (message(device, ONLINE, t2, retain=True), ("online", t1, t1)),  # nothing new
        (message(device, OFFLINE, t3, retain=True), ("offline", t3, t1)),  # changed meanwhile
        (message(device, b"not json", t4), ("offline", t3, t4)),  # it spoke, unreadably
    ]
    with pool.connection() as conn:
        for received, expected in steps:
            assert record(conn, received)
            assert state_of(pool, device) == expected
    assert events_of(pool, device) == [
        ("online", False), ("online", True), ("offline", True), ("invalid", False)
    ]  # fmt: skip


def test_a_retained_status_of_a_never_seen_device_counts_as_seen(pool):
    device = new_device(pool)
    with pool.connection() as conn:
        assert record(conn, message(device, OFFLINE, T0, retain=True))
    assert state_of(pool, device) == ("offline", T0, T0)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda d: message("dev-not-registered", ONLINE, T0), "unknown device"),
        (lambda d: message(d, ONLINE, T0, topic=readings_topic(d)), "not a status topic"),
        (lambda d: message(d, ONLINE, T0, topic=f"ehl/v1/devices/{d}/status/x"), "extra level"),
        (lambda d: message(d, b"", T0, retain=True), "a cleared retained topic"),
    ],
)
def test_what_is_not_a_registered_devices_status_is_ignored(pool, make, why):
    device = new_device(pool)
    with pool.connection() as conn:
        assert not record(conn, make(device)), why
    assert state_of(pool, device) == ("never_seen", None, None)
    assert events_of(pool, device) == []


# -- the presence thread with a real broker -------------------------------------------------


@pytest.fixture
def device(pool, platform):
    """A registered device with broker credentials: (device_id, address to connect as)."""
    device_id, password = new_device(pool), secrets.token_hex(16)
    with DynamicSecurity(platform) as dynsec:
        dynsec.create_device_client(device_id, password)
    yield device_id, platform.as_user(device_id, password)
    with DynamicSecurity(platform) as dynsec:
        dynsec.delete_device_client(device_id)


def go_online(device_id: str, address: BrokerAddress) -> MqttConnection:
    will = Will(status_topic(device_id), OFFLINE)
    connection = MqttConnection(address, device_id, will=will).connect()
    connection.publish(status_topic(device_id), ONLINE, retain=True)
    return connection


def test_online_then_the_last_will(pool, platform, device):
    device_id, address = device
    presence = Presence(platform, pool).start()
    try:
        connection = go_online(device_id, address)
        assert wait_until(lambda: state_of(pool, device_id)[0] == "online")
        connection.drop()  # as a device losing power: the broker sends the Will
        assert wait_until(lambda: state_of(pool, device_id)[0] == "offline")
    finally:
        presence.stop()
    assert not presence.running
    _, status_at, last_seen = state_of(pool, device_id)
    assert status_at is not None and last_seen == status_at
    assert events_of(pool, device_id) == [("online", False), ("offline", False)]


def test_a_presence_started_later_reads_the_retained_state(pool, platform, device):
    device_id, address = device
    connection = go_online(device_id, address)
    try:
        presence = Presence(platform, pool).start()
        try:
            assert wait_until(lambda: state_of(pool, device_id)[0] == "online")
        finally:
            presence.stop()
    finally:
        connection.close()  # clean DISCONNECT: no Will, the retained state stays online
    assert events_of(pool, device_id) == [("online", True)]


def test_presence_comes_back_after_a_broker_restart(pool, platform, device, mosquitto_broker):
    device_id, address = device
    presence = Presence(platform, pool, reconnect_delay_s=0.2).start()
    try:
        mosquitto_broker.stop()
        mosquitto_broker.start()
        assert presence.running
        connection = wait_for_connection(lambda: go_online(device_id, address))
        try:
            assert wait_until(lambda: state_of(pool, device_id)[0] == "online")
        finally:
            connection.close()
    finally:
        presence.stop()
    assert not presence.running


def wait_for_connection(connect, timeout: float = 30.0) -> MqttConnection:
    """The broker accepts connections a moment after it starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect()
        except (ServiceUnavailableError, AuthenticationError, MqttError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_stop_is_prompt_and_idempotent(pool, platform):
    presence = Presence(platform, pool).start()
    started = time.monotonic()
    presence.stop()
    presence.stop()
    assert not presence.running and time.monotonic() - started < 2
    with psycopg.connect(pool.conninfo) as conn:  # the pool was left usable
        assert conn.execute("SELECT 1").fetchone() == (1,)
