"""The broker's journal (`ehl_journal`): what a crashed broker acknowledged comes back, a clean
stop leaves nothing to publish again, a torn record ends its segment, and old segments go.

Each test has a subscriber with a persistent session (as an ingest worker has) that is away
while a device publishes, so the broker holds the messages in its queue for it. After the
messages come a marker: a session's messages arrive in order, so once the marker is in, no
message published again at start can still be on its way.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import orjson
import pytest
from ingest_fixtures import T0, Pilot, bp, message, pilot_on
from reliability_fixtures import broker_of_its_own, eventually, journal_replay, sigkill_broker

from ehealthlab.contract.topics import readings_topic
from ehealthlab.mqtt import ConnectionLostError, MqttConnection
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.plugin import JOURNAL, build_plugin
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.programs import ServiceAccount, log_since, log_size, place_for

READINGS = "ehl/v1/devices/+/readings"
MARKER_SEQ = 999


@pytest.fixture
def broker(tmp_path_factory) -> Iterator[MosquittoBroker]:
    """The stack's broker, with segments of 1 s kept 3 s, so that expiry shows quickly."""
    broker = broker_of_its_own(tmp_path_factory, journal_segment_s=1, journal_keep_s=3)
    yield broker
    broker.remove()


@pytest.fixture
def pilot(plain_admin_url, migrated_template, broker) -> Iterator[Pilot]:
    yield from pilot_on(plain_admin_url, migrated_template, broker)


class Subscriber:
    """A persistent session on the readings topics, like an ingest worker's."""

    def __init__(self, pilot: Pilot) -> None:
        self.pilot = pilot
        self.client_id = f"journal-test-{uuid.uuid4().hex[:8]}"
        self.received: queue.Queue = queue.Queue()
        self.connection: MqttConnection | None = None

    def connect(self) -> Subscriber:
        self.connection = MqttConnection(
            self.pilot.admin,
            self.client_id,
            clean_start=False,
            session_expiry_s=3600,
            on_message=self.received.put,
        ).connect()
        self.connection.subscribe(READINGS, qos=1)
        return self

    def away(self) -> None:
        assert self.connection is not None
        self.connection.close()

    def until_marker(self, timeout: float = 60) -> list:
        """Every message up to and including the marker."""
        got = []
        while True:
            item = self.received.get(timeout=timeout)
            got.append(item)
            if msg_id(item) == f"m-{MARKER_SEQ}":
                return got


def publish(pilot: Pilot, seqs: range | list[int]) -> str:
    """A registered device publishes one reading a message, each acknowledged; its id."""
    device_id, password = pilot.register()
    with pilot.device(device_id, password) as device:
        for seq in seqs:
            device.publish(readings_topic(device_id), message(bp(seq, T0), msg_id=f"m-{seq}"))
    return device_id


def msg_id(received) -> str:
    return orjson.loads(received.payload)["msg_id"]


def ids(seqs: range | list[int]) -> list[str]:
    return [f"m-{seq}" for seq in seqs]


def segments(broker: MosquittoBroker) -> list[str]:
    return sorted(p.name for p in broker.journal_dir.glob("ehl-journal-*.log"))


def crash(broker: MosquittoBroker) -> None:
    """SIGKILL, without starting it again."""
    pid = broker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: not broker.is_running(), 30)


def test_a_crashed_broker_publishes_what_it_acknowledged_again_with_its_receive_stamps(
    pilot, broker
):
    subscriber = Subscriber(pilot).connect()
    subscriber.away()
    publish(pilot, range(1, 6))
    killed_at = datetime.now(UTC)
    offset = log_size(broker.log_file)
    sigkill_broker(broker)
    replayed = journal_replay(broker, offset)
    assert replayed is not None and replayed["messages"] == 5
    subscriber.connect()
    publish(pilot, [MARKER_SEQ])
    got = subscriber.until_marker()
    assert [msg_id(m) for m in got] == ids([1, 2, 3, 4, 5, MARKER_SEQ])
    for replayed in got[:-1]:  # the broker's stamp from before the crash, not a new one
        assert replayed.broker_stamped and replayed.received_at <= killed_at
    subscriber.away()


def test_without_the_journal_a_crashed_broker_forgets_them(pilot, broker):
    """What the journal is for: the same crash on a broker without it."""
    broker.stop()
    broker.journal = False
    broker.start()
    subscriber = Subscriber(pilot).connect()
    subscriber.away()
    broker.stop()
    broker.start()  # a clean stop saved the session: only the crash's loss is left
    publish(pilot, range(1, 6))
    offset = log_size(broker.log_file)
    sigkill_broker(broker)
    assert journal_replay(broker, offset) is None
    subscriber.connect()
    publish(pilot, [MARKER_SEQ])
    assert [msg_id(m) for m in subscriber.until_marker()] == ids([MARKER_SEQ])
    subscriber.away()


def test_after_a_clean_stop_nothing_is_published_twice(pilot, broker):
    subscriber = Subscriber(pilot).connect()
    subscriber.away()
    publish(pilot, range(1, 6))
    assert segments(broker)
    offset = log_size(broker.log_file)
    broker.stop()  # Mosquitto saves its state, then the journal is cleared
    assert segments(broker) == []
    broker.start()
    assert journal_replay(broker, offset) is None
    subscriber.connect()
    publish(pilot, [MARKER_SEQ])
    assert [msg_id(m) for m in subscriber.until_marker()] == ids([1, 2, 3, 4, 5, MARKER_SEQ])
    subscriber.away()


def test_a_torn_record_ends_its_segment_and_the_rest_is_published_again(pilot, broker):
    subscriber = Subscriber(pilot).connect()
    subscriber.away()
    publish(pilot, range(1, 4))
    crash(broker)
    newest = broker.journal_dir / segments(broker)[-1]
    with newest.open("ab") as stream:  # a record cut short: its header says 1 KiB follows
        stream.write(b"EHJ1" + (1024).to_bytes(4, "little") + b"\0\0\0\0" + b"cut")
    offset = log_size(broker.log_file)
    broker.start()
    replayed = journal_replay(broker, offset)
    assert replayed is not None and replayed["messages"] == 3
    assert "(1 segments ended early)" in broker.log_file.read_text()[offset:]
    subscriber.connect()
    publish(pilot, [MARKER_SEQ])
    assert [msg_id(m) for m in subscriber.until_marker()] == ids([1, 2, 3, MARKER_SEQ])
    subscriber.away()


def test_a_segment_is_deleted_once_its_records_are_older_than_the_keep_time(pilot, broker):
    publish(pilot, [1])
    first = segments(broker)[0]
    # segments of 1 s kept 3 s: gone within a few seconds, with a bounded number left
    assert eventually(lambda: first not in segments(broker), 30, step=0.2)
    assert 1 <= len(segments(broker)) <= 6


def test_a_subscription_to_the_readings_saves_the_broker_at_once_then_at_most_every_10_s(
    pilot, broker
):
    """A new worker's session is saved at once; a client repeating subscriptions (the plugin is
    asked before dynamic security decides) cannot make the broker save more often."""

    def saves() -> int:
        return log_since(broker.log_file, offset).count("Saving in-memory database")

    offset = log_size(broker.log_file)
    subscriber = Subscriber(pilot).connect()
    assert eventually(lambda: saves() == 1, 10)
    assert subscriber.connection is not None
    for _ in range(5):
        subscriber.connection.subscribe(READINGS, qos=1)
    publish(pilot, [MARKER_SEQ])  # a round trip through the broker's loop after them
    assert saves() == 1
    assert eventually(lambda: saves() == 2, 30)  # the one deferred, 10 s after the first
    subscriber.away()


def test_the_plugin_builds_with_the_others(tmp_path):
    built = build_plugin(JOURNAL, tmp_path)
    assert built.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs for the journal (root)")
def test_a_reading_the_journal_cannot_keep_is_refused_and_every_acknowledged_one_comes_back(
    plain_admin_url, migrated_template, tmp_path_factory
):
    """The journal on a 64 KiB file system that fills: the broker refuses the message it
    cannot write (no PUBACK: the device keeps it), and every message it acknowledged is
    published again after a crash."""
    account = ServiceAccount.for_server("mosquitto")
    broker = MosquittoBroker(place_for(account, tmp_path_factory.mktemp("j") / "s"))
    broker.journal_dir.mkdir(parents=True)
    options = f"size=64k,mode=0700,uid={account.uid},gid={account.gid}"
    mount = ["mount", "-t", "tmpfs", "-o", options, "ehl-journal-test"]
    subprocess.run([*mount, str(broker.journal_dir)], check=True)
    try:
        start_on_free_port(broker)
        with contextmanager(pilot_on)(plain_admin_url, migrated_template, broker) as pilot:
            subscriber = Subscriber(pilot).connect()
            subscriber.away()
            acknowledged, refused = [], None
            device_id, password = pilot.register()
            with pilot.device(device_id, password) as device:
                for seq in range(1, 200):
                    padded = orjson.dumps({"msg_id": f"m-{seq}", "pad": "x" * 4000})
                    try:
                        device.publish(readings_topic(device_id), padded, timeout=30)
                    except ConnectionLostError as refusal:  # closed, no PUBACK (not a timeout)
                        refused = (seq, str(refusal))
                        break
                    acknowledged.append(seq)
            assert refused is not None, "the journal never filled"
            assert 5 <= len(acknowledged) < 16, (refused, acknowledged)
            assert "cannot write to the journal" in broker.log_file.read_text()
            crash(broker)
            subprocess.run(["mount", "-o", "remount,size=4m", str(broker.journal_dir)], check=True)
            broker.start()
            subscriber.connect()
            publish(pilot, [MARKER_SEQ])
            got = [msg_id(m) for m in subscriber.until_marker()]
            assert got == ids([*acknowledged, MARKER_SEQ])
            subscriber.away()
    finally:
        broker.stop()
        subprocess.run(["umount", str(broker.journal_dir)], check=False)
        broker.remove()
