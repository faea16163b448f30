"""Partitioned ingest, ingest's default: the broker's `ehl_ingest_partitions` plugin sends each
worker only the readings of its own partition of the devices, and agrees with ingest's
`partition_of` about whose they are, so a message is kept by exactly one worker.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator

import pytest
from ingest_fixtures import T0, Pilot, RunningWorker, bp, message, pilot_on, publish_all, stream

from ehealthlab import cli
from ehealthlab.contract.topics import (
    READINGS_WILDCARD,
    STATUS_WILDCARD,
    readings_topic,
    status_topic,
)
from ehealthlab.ingest.pipeline import partition_of
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import MqttConnection, ReceivedMessage

PARTITIONS = 3


@pytest.fixture
def pilot(plain_admin_url, migrated_template, mosquitto_broker) -> Iterator[Pilot]:
    yield from pilot_on(plain_admin_url, migrated_template, mosquitto_broker)


def drain(inbox: queue.Queue[ReceivedMessage], settle_s: float = 1.0) -> list[ReceivedMessage]:
    """Everything that arrives until nothing has for `settle_s`."""
    got: list[ReceivedMessage] = []
    while True:
        try:
            got.append(inbox.get(timeout=settle_s))
        except queue.Empty:
            return got


@pytest.mark.parametrize(
    ("config", "client_id"),
    [
        (IngestConfig(), "ingest-1"),
        (IngestConfig(subscription="partitioned", partition=0, partitions=1), "ingest-1.p1of1"),
        (IngestConfig(subscription="partitioned", partition=2, partitions=4), "ingest-1.p3of4"),
    ],
)
def test_a_partitioned_worker_names_its_partition_in_its_client_id(config, client_id):
    assert config.client_id("ingest-1") == client_id


def test_each_partition_receives_only_its_devices_readings_and_every_status(pilot: Pilot):
    devices = [pilot.register() for _ in range(12)]
    tag = uuid.uuid4().hex[:6]
    inboxes: dict[str, queue.Queue[ReceivedMessage]] = {}
    listeners = []
    for client_id in [f"probe-{tag}.p{k}of{PARTITIONS}" for k in range(1, PARTITIONS + 1)] + [
        f"probe-{tag}"
    ]:
        inboxes[client_id] = queue.Queue()
        listener = MqttConnection(pilot.admin, client_id, on_message=inboxes[client_id].put)
        listener.connect()
        listener.subscribe(READINGS_WILDCARD, qos=1)
        listener.subscribe(STATUS_WILDCARD, qos=1)
        listeners.append(listener)
    try:
        for device_id, password in devices:
            with pilot.device(device_id, password) as device:
                assert device.wait_for(
                    device.publish_nowait(readings_topic(device_id), message(bp(1, T0))), 10
                )
                assert device.wait_for(
                    device.publish_nowait(status_topic(device_id), b'{"state":"online"}'), 10
                )
        received = {client_id: drain(inbox) for client_id, inbox in inboxes.items()}
    finally:
        for listener in listeners:
            listener.close()

    every_device = {d for d, _ in devices}
    for client_id, messages in received.items():
        readings = {m.topic.split("/")[3] for m in messages if m.topic.endswith("/readings")}
        statuses = {m.topic.split("/")[3] for m in messages if m.topic.endswith("/status")}
        assert statuses >= every_device, client_id  # only readings are partitioned
        if ".p" not in client_id:
            assert readings == every_device  # a client that names no partition gets them all
            continue
        k = int(client_id.rsplit(".p", 1)[1].split("of")[0])
        mine = {d for d in every_device if partition_of(readings_topic(d), PARTITIONS) == k - 1}
        assert readings == mine, client_id
    # the 12 devices do fall into more than one partition, so the check above means something
    assert len({partition_of(readings_topic(d), PARTITIONS) for d in every_device}) > 1


def test_partitioned_workers_store_everything_and_receive_nothing_foreign(pilot: Pilot):
    configs = [
        IngestConfig(subscription="partitioned", partition=p, partitions=2) for p in range(2)
    ]
    name = f"ingest-{uuid.uuid4().hex[:6]}"
    running = [RunningWorker(pilot.settings, f"{name}-{p + 1}", c) for p, c in enumerate(configs)]
    try:
        # device ids are random: register until each partition has three devices (six
        # random ids all fall in one partition 3 % of the time)
        devices: list[tuple[str, str]] = []
        while any(sum(partition_of(readings_topic(d), 2) == p for d, _ in devices) < 3
                  for p in (0, 1)):  # fmt: skip
            device = pilot.register("multiparameter_monitor")
            if sum(partition_of(readings_topic(d), 2) == partition_of(
                    readings_topic(device[0]), 2) for d, _ in devices) < 3:  # fmt: skip
                devices.append(device)
        for device_id, password in devices:
            publish_all(pilot, device_id, password, stream(device_id, 500))
        assert pilot.wait_for("SELECT count(*) FROM readings", [(3000,)], timeout=60) == [(3000,)]
        deadline = time.monotonic() + 10
        while sum(r.worker.stats.messages for r in running) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = [r.worker.stats for r in running]
        assert [s.foreign for s in stats] == [0, 0]
        assert sum(s.messages for s in stats) == 60  # 6 devices x 10 messages, each once
        assert sum(s.redeliveries for s in stats) == 0
        assert all(s.messages > 0 for s in stats)
    finally:
        for r in running:
            r.close()
        end_sessions(pilot, [c.client_id(f"{name}-{p + 1}") for p, c in enumerate(configs)])


def end_sessions(pilot: Pilot, client_ids: list[str]) -> None:
    """A partitioned worker keeps its session when it stops; end a test's ones."""
    for client_id in client_ids:
        MqttConnection(pilot.admin, client_id, clean_start=True).connect().close(end_session=True)


def test_workers_on_several_machines_must_name_the_number_of_partitions(capsys):
    assert cli.main(["ingest", "--first", "2", "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "ehealthlab: workers on several machines need --partitions N, the same on every machine"
    )


@pytest.mark.parametrize("wait_ms", ["-1", "10001"])
def test_a_wait_to_fill_a_batch_out_of_range_is_refused_in_one_line(capsys, wait_ms):
    assert cli.main(["ingest", "--batch-wait-ms", wait_ms]) == 2
    assert capsys.readouterr().err.strip() == (
        "ehealthlab: --batch-wait-ms must be between 0 and 10000 milliseconds"
    )


def test_a_retired_worker_stores_what_waited_for_it_and_its_session_ends(pilot: Pilot):
    config = IngestConfig(subscription="partitioned", partition=0, partitions=1)
    name = f"ingest-{uuid.uuid4().hex[:6]}"
    device_id, password = pilot.register("multiparameter_monitor")
    RunningWorker(pilot.settings, name, config).close()  # stopped: its session stays
    publish_all(pilot, device_id, password, stream(device_id, 200))  # kept for it
    IngestWorker(pilot.settings, name, config).retire()
    assert pilot.query("SELECT count(*) FROM readings") == [(200,)]
    # no session any more: what is published now is kept for nobody, so the same worker
    # started again finds nothing waiting
    publish_all(pilot, device_id, password, stream(device_id, 100, start_seq=1000))
    again = RunningWorker(pilot.settings, name, config)
    try:
        # a probe published now comes after anything the session could have kept, in order
        publish_all(pilot, device_id, password, stream(device_id, 1, start_seq=5000))
        assert pilot.wait_for("SELECT count(*) FROM readings", [(201,)]) == [(201,)]
        deadline = time.monotonic() + 30  # its counter follows the commit
        while again.worker.stats.messages < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert again.worker.stats.messages == 1
    finally:
        again.close()
        end_sessions(pilot, [config.client_id(name)])
