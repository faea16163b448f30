"""Device presence: what the status topic says, recorded in the registry.

`record` against a real PostgreSQL with hand-made messages (retained or live, readable or
not); then the presence thread against a real Mosquitto: a device's retained `online` and
its Last Will, a presence started after the fact, a broker restart, a clean stop; then two
presence threads on one database, as two API processes run them: one records, and the other
takes over when the first stops or loses its database session, each message recorded once.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from psycopg_pool import ConnectionPool

from ehealthlab.contract.topics import readings_topic, status_topic
from ehealthlab.errors import AuthenticationError, ServiceUnavailableError
from ehealthlab.gateway import device_registry, organisation_registry
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.gateway.presence import (
    LOCK_KEY,
    Presence,
    application_name,
    lock_holder,
    lock_ids,
    record,
)
from ehealthlab.mqtt import BrokerAddress, MqttConnection, MqttError, ReceivedMessage, Will

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
ONLINE, OFFLINE = b'{"state": "online"}', b'{"state": "offline"}'


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
        startup = organisation_registry.create_organisation(
            conn, "startup", f"start-up {device_id}"
        )
        device_registry.insert_device(conn, organisation_id=startup.id, device_id=device_id,
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


def test_online_then_the_last_will(pool, database_url, platform, device):
    device_id, address = device
    presence = Presence(platform, database_url).start()
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


def test_a_presence_started_later_reads_the_retained_state(pool, database_url, platform, device):
    device_id, address = device
    connection = go_online(device_id, address)
    try:
        presence = Presence(platform, database_url).start()
        try:
            assert wait_until(lambda: state_of(pool, device_id)[0] == "online")
        finally:
            presence.stop()
    finally:
        connection.close()  # clean DISCONNECT: no Will, the retained state stays online
    assert events_of(pool, device_id) == [("online", True)]


def test_a_status_whose_user_property_holds_u_feff_is_recorded(pool, database_url, platform,
                                                               device):  # fmt: skip
    """U+FEFF is allowed in an MQTT 5 string; paho's own decoder refused it and dropped the
    connection, and a retained status came again on every reconnection: one device's
    status could stop presence for all. The platform's client decodes it (publish_decoder)."""
    device_id, address = device
    with MqttConnection(address, device_id) as connection:
        connection.publish(
            status_topic(device_id), ONLINE, retain=True, user_properties=[("fw", "\ufeff1.0")]
        )
        presence = Presence(platform, database_url).start()
        try:
            assert wait_until(lambda: state_of(pool, device_id)[0] == "online")
            connection.publish(status_topic(device_id), OFFLINE, retain=True)
            assert wait_until(lambda: state_of(pool, device_id)[0] == "offline")
        finally:
            presence.stop()
    assert events_of(pool, device_id) == [("online", True), ("offline", False)]


def test_presence_comes_back_after_a_broker_restart(
    pool, database_url, platform, device, mosquitto_broker
):
    device_id, address = device
    presence = Presence(platform, database_url, retry_interval_s=0.2).start()
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


def test_stop_is_prompt_idempotent_and_gives_the_lock_up(pool, database_url, platform):
    presence = Presence(platform, database_url).start()
    assert presence.leading and holder(pool) is not None
    started = time.monotonic()
    presence.stop()
    presence.stop()
    assert not presence.running and time.monotonic() - started < 2
    assert not presence.leading and holder(pool) is None


# -- one recorder among several processes: the advisory lock ---------------------------------

#: how soon a follower (trying every 0.5 s here) records after the leader went away; the
#: design's bound is its retry interval plus a connection to PostgreSQL and the broker, the
#: rest is slack for a loaded machine
FAILOVER_BOUND_S = 5.0
FOLLOWER_RETRY_S = 0.5


def holder(pool) -> str | None:
    with pool.connection() as conn:
        return lock_holder(conn)


def test_the_locks_key_as_pg_locks_shows_it():
    assert lock_ids(0x0000_0001_0000_0002) == (1, 2)
    assert lock_ids(-1) == (0xFFFF_FFFF, 0xFFFF_FFFF)  # a negative key, as two oids
    assert lock_ids(LOCK_KEY) == (0x65686C2D, 0x70726573)
    assert application_name("api-1", 42) == "ehl-presence api-1:42"
    assert len(application_name("h" * 100, 42)) == 63


@pytest.fixture
def two_presences(pool, database_url, platform):
    """A leader and a follower on one database and broker, as two API processes run them."""
    first = Presence(platform, database_url, retry_interval_s=FOLLOWER_RETRY_S).start()
    second = Presence(platform, database_url, retry_interval_s=FOLLOWER_RETRY_S).start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()
    assert holder(pool) is None  # both gave the lock up


def test_two_presences_record_each_status_message_once(pool, device, two_presences):
    device_id, address = device
    first, second = two_presences
    assert (first.leading, second.leading) == (True, False)  # the first to start leads
    connection = go_online(device_id, address)
    assert wait_until(lambda: len(events_of(pool, device_id)) == 1)
    connection.publish(status_topic(device_id), b"not json")  # live, not retained
    connection.drop()  # the Will
    assert wait_until(lambda: len(events_of(pool, device_id)) >= 3)
    # the follower keeps trying for the lock meanwhile (every 0.5 s) without recording
    assert wait_until(lambda: second.running and not second.leading)
    assert events_of(pool, device_id) == [("online", False), ("invalid", False),
                                          ("offline", False)]  # fmt: skip


def test_the_follower_takes_over_when_the_leader_stops(pool, device, two_presences):
    device_id, address = device
    first, second = two_presences
    connection = go_online(device_id, address)
    assert wait_until(lambda: events_of(pool, device_id) == [("online", False)])
    first.stop()
    stopped = time.monotonic()
    # the new leader subscribes and records the retained state: the device is online
    assert wait_until(lambda: len(events_of(pool, device_id)) == 2)
    took_over = time.monotonic() - stopped
    assert second.leading and not first.leading
    connection.drop()
    assert wait_until(lambda: len(events_of(pool, device_id)) == 3)
    assert events_of(pool, device_id) == [("online", False), ("online", True),
                                          ("offline", False)]  # fmt: skip
    assert took_over < FAILOVER_BOUND_S, f"took over after {took_over:.1f} s"


def test_a_leader_that_lost_its_database_session_records_nothing(
    pool, platform, device, database_url
):
    """The lock and the writes share one session: once the server ended it, the old leader
    cannot record even before it notices, so a message reaching both leaders counts once."""
    device_id, address = device
    # the old leader checks its session rarely, so it is still subscribed when the message
    # comes; only its failed write tells it that it lost the lock
    first = Presence(platform, database_url, retry_interval_s=60).start()
    second = Presence(platform, database_url, retry_interval_s=FOLLOWER_RETRY_S).start()
    try:
        connection = go_online(device_id, address)
        assert wait_until(lambda: events_of(pool, device_id) == [("online", False)])
        with pool.connection() as conn:
            (ended,) = _one(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND granted AND (classid, objid) = (%s::oid, %s::oid)"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                lock_ids(LOCK_KEY),
            ).fetchall())  # fmt: skip
        assert ended
        terminated = time.monotonic()
        assert wait_until(lambda: len(events_of(pool, device_id)) == 2)  # the retained state
        took_over = time.monotonic() - terminated
        assert second.leading and first.leading  # the old leader has not noticed yet
        connection.drop()  # the Will reaches both subscribers
        assert wait_until(lambda: len(events_of(pool, device_id)) == 3)
        assert wait_until(lambda: not first.leading)  # its write failed: it stepped down
        assert second.leading
        assert events_of(pool, device_id) == [("online", False), ("online", True),
                                              ("offline", False)]  # fmt: skip
        assert took_over < FAILOVER_BOUND_S, f"took over after {took_over:.1f} s"
    finally:
        first.stop()
        second.stop()


def _one(rows):
    assert len(rows) == 1, rows
    return rows[0]
