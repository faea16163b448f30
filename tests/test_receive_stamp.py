"""The broker's receive stamp: reading it from a message, building the plugin that adds it, and
ingest's check at start that the broker stamps as settings declare."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from ingest_fixtures import T0, Pilot, RunningWorker, bp, message, pilot_on

from ehealthlab.contract.topics import PLATFORM_PROBE_PREFIX, readings_topic
from ehealthlab.errors import MissingDependencyError
from ehealthlab.gateway.dynsec import PLATFORM_ROLE, DynamicSecurity, platform_acls
from ehealthlab.ingest.stamp_check import require_receive_stamp
from ehealthlab.mqtt import RECEIVE_STAMP_PROPERTY, MqttError, broker_receive_time
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.plugin import PLUGIN_NAME, build_receive_stamp_plugin
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.programs import ServiceAccount, place_for

STAMP = datetime(2026, 3, 10, 7, 0, 0, 123000, tzinfo=UTC)
STAMP_MS = str(int(STAMP.timestamp() * 1000))


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        (None, None),
        ([], None),
        ([("other", "1")], None),
        ([(RECEIVE_STAMP_PROPERTY, STAMP_MS)], STAMP),
        # a publisher's own property of that name comes first; the broker's is appended last
        ([(RECEIVE_STAMP_PROPERTY, "0"), ("x", "y"), (RECEIVE_STAMP_PROPERTY, STAMP_MS)], STAMP),
        ([(RECEIVE_STAMP_PROPERTY, "not a number")], None),
        ([(RECEIVE_STAMP_PROPERTY, "9" * 40)], None),
    ],
)
def test_the_last_stamp_of_a_message_is_the_brokers(properties, expected):
    assert broker_receive_time(properties) == expected


def test_the_plugin_is_built_once_per_source_version(tmp_path):
    built = build_receive_stamp_plugin(tmp_path)
    assert built.name.startswith(PLUGIN_NAME) and built.suffix == ".so"
    assert built.read_bytes()[:4] == b"\x7fELF"
    first_build = built.stat().st_mtime_ns
    assert build_receive_stamp_plugin(tmp_path) == built
    assert built.stat().st_mtime_ns == first_build


def test_missing_headers_name_the_packages_to_install(tmp_path):
    with pytest.raises(MissingDependencyError, match="mosquitto-dev"):
        build_receive_stamp_plugin(tmp_path / "out", include_dir=tmp_path / "no-headers")


# -- declared in settings, checked at start ---------------------------------------------------


@pytest.fixture(scope="module")
def unstamped_broker(tmp_path_factory) -> Iterator[MosquittoBroker]:
    """A broker like the stack's, but without the receive-stamp plugin."""
    account = ServiceAccount.for_server("mosquitto")
    broker = MosquittoBroker(
        place_for(account, tmp_path_factory.mktemp("unstamped") / "s"), receive_stamp=False
    )
    start_on_free_port(broker)
    yield broker
    broker.remove()


@pytest.fixture
def stamped_pilot(plain_admin_url, migrated_template, mosquitto_broker) -> Iterator[Pilot]:
    yield from pilot_on(plain_admin_url, migrated_template, mosquitto_broker)


@pytest.fixture
def unstamped_pilot(plain_admin_url, migrated_template, unstamped_broker) -> Iterator[Pilot]:
    yield from pilot_on(plain_admin_url, migrated_template, unstamped_broker)


def test_the_start_up_check_passes_on_a_broker_that_stamps(stamped_pilot):
    with DynamicSecurity(stamped_pilot.admin) as dynsec:
        dynsec.ensure_platform_role(stamped_pilot.admin.username or "")
    require_receive_stamp(stamped_pilot.settings)  # returns: the stack's broker stamps


def test_ingest_refuses_to_start_on_a_broker_declared_to_stamp_that_does_not(unstamped_pilot):
    env = {
        **os.environ,
        "EHEALTHLAB_DATABASE_URL": unstamped_pilot.database_url,
        "EHEALTHLAB_MQTT_HOST": unstamped_pilot.admin.host,
        "EHEALTHLAB_MQTT_PORT": str(unstamped_pilot.admin.port),
        "EHEALTHLAB_MQTT_USERNAME": unstamped_pilot.admin.username or "",
        "EHEALTHLAB_MQTT_PASSWORD": unstamped_pilot.admin.password or "",
        "EHEALTHLAB_STATE_DIR": "/nonexistent-ehealthlab-state",
    }
    result = subprocess.run(
        [sys.executable, "-m", "ehealthlab.cli", "ingest", "--name", "ingest-unstamped"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ehealthlab: the broker does not stamp receive times (plugin ehl_receive_stamp not "
        "loaded): load it (docs/ingest.md) or declare EHEALTHLAB_BROKER_RECEIVE_STAMP=false"
    )


def test_declared_without_the_plugin_no_stamp_a_publisher_puts_is_believed(unstamped_pilot):
    settings = unstamped_pilot.settings.model_copy(update={"broker_receive_stamp": False})
    running = RunningWorker(settings, f"ingest-{uuid.uuid4().hex[:6]}")
    device_id, password = unstamped_pilot.register()
    try:
        before = datetime.now(UTC)
        with unstamped_pilot.device(device_id, password) as device:
            device.publish(
                readings_topic(device_id),
                message(bp(1, T0)),
                user_properties=[(RECEIVE_STAMP_PROPERTY, "0")],  # "received in 1970"
            )
        stored = "SELECT count(*) FROM device_messages"
        assert unstamped_pilot.wait_for(stored, [(1,)]) == [(1,)]
    finally:
        running.close()
    [(received_at,)] = unstamped_pilot.query("SELECT received_at FROM device_messages")
    assert received_at >= before  # the worker's read time, not the forged epoch


def test_a_platform_role_made_by_an_earlier_version_gets_the_probe_rights(stamped_pilot):
    username = stamped_pilot.admin.username or ""
    with DynamicSecurity(stamped_pilot.admin) as dynsec:
        dynsec.ensure_platform_role(username)
    probes = [a for a in platform_acls() if a["topic"].startswith(PLATFORM_PROBE_PREFIX)]
    # as the role was before the start-up check existed; the broker then drops this
    # connection, as it drops any of the role's clients when the role changes
    with DynamicSecurity(stamped_pilot.admin) as dynsec, contextlib.suppress(MqttError):
        dynsec.execute(
            *(
                {"command": "removeRoleACL", "rolename": PLATFORM_ROLE,
                 "acltype": a["acltype"], "topic": a["topic"]}
                for a in probes
            )
        )  # fmt: skip
    with DynamicSecurity(stamped_pilot.admin) as dynsec:
        assert len((dynsec.get_role(PLATFORM_ROLE) or {})["acls"]) == len(platform_acls()) - 2
        dynsec.ensure_platform_role(username)
        role = dynsec.get_role(PLATFORM_ROLE) or {}
    held = {(a["acltype"], a["topic"]) for a in role.get("acls", [])}
    assert {(a["acltype"], a["topic"]) for a in platform_acls()} <= held
    require_receive_stamp(stamped_pilot.settings)
