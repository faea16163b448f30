"""What the reliability tests share: a fleet of simulated devices publishing on their own
threads, `ehealthlab ingest` as a real process group that can be SIGKILLed and restarted,
a broker crash, and the counts that say whether anything was lost or stored twice.

The servers are a module's own (`own_postgres`, `own_broker`, here and imported by each test
module that breaks them), so stopping them disturbs no other module.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
import pytest
from conftest import create_database, with_database
from ingest_fixtures import Pilot, message

from ehealthlab.contract.topics import readings_topic
from ehealthlab.ingest.pipeline import partition_of
from ehealthlab.mqtt import MqttConnection
from ehealthlab.simulators.device import Device
from ehealthlab.simulators.device_config import DeviceConfig, DeviceRegistration
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, log_since, place_for
from ehealthlab.store.migrate import migrate

# -- servers of a module's own ------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test module alone: its tests may stop it."""
    server = PostgresServer(
        place_for(ServiceAccount.for_server("postgres"), tmp_path_factory.mktemp("pg") / "s"),
        fsync=False,
    )
    start_on_free_port(server)
    yield server
    server.remove()


def broker_of_its_own(tmp_path_factory, **options) -> MosquittoBroker:
    """A started broker like the stack's (`options` as MosquittoBroker's), for one test or
    module alone: its tests may kill it. The caller removes it."""
    broker = MosquittoBroker(
        place_for(ServiceAccount.for_server("mosquitto"), tmp_path_factory.mktemp("mq") / "s"),
        **options,
    )
    start_on_free_port(broker)
    return broker


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory) -> Iterator[MosquittoBroker]:
    """A broker for one test module alone: its tests may kill it."""
    broker = broker_of_its_own(tmp_path_factory)
    yield broker
    broker.remove()


def eventually(predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.1) -> bool:
    """Poll until true; the timeout bounds a failure only (the machine is loaded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


@contextlib.contextmanager
def fresh_pilot(postgres, broker) -> Iterator[Pilot]:
    """A migrated database of its own on `postgres`, the platform role on `broker`."""
    admin_url = postgres.url("postgres")
    name = create_database(admin_url)
    url = with_database(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    pilot = Pilot(url, broker)
    try:
        yield pilot
    finally:
        pilot.cleanup()


def via_port(url: str, port: int) -> str:
    """The same database URL, through another port on 127.0.0.1 (the fault proxy)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


def sigkill_broker(broker: MosquittoBroker) -> None:
    """Crash the broker (no persistence written on the way out), then start it again on
    its port from what its last autosave kept and what its journal holds."""
    pid = broker.pid()
    assert pid is not None, "the broker is not running"
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: not broker.is_running(), timeout=30)
    broker.start(timeout=60)


def journal_replay(broker: MosquittoBroker, offset: int) -> dict[str, int] | None:
    """What the broker's journal published again at its last start since `offset` in its log
    (messages, segments), or None when it published nothing (no journal loaded)."""
    found = re.findall(
        r"ehl_journal: (\d+) messages from (\d+) segments published again",
        log_since(broker.log_file, offset),
    )
    if not found:
        return None
    messages, segments = found[-1]
    return {"messages": int(messages), "segments": int(segments)}


# -- ingest as the operator runs it -------------------------------------------------------------


class IngestCommand:
    """`ehealthlab ingest --workers N` (its default subscription mode), in a session of its
    own so the test can kill one worker or the whole group."""

    def __init__(self, pilot: Pilot, workers: int = 2, database_url: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        settings = pilot.settings
        self.env = {
            **os.environ,
            "EHEALTHLAB_DATABASE_URL": database_url or settings.database_url.get_secret_value(),
            "EHEALTHLAB_MQTT_HOST": settings.mqtt_host,
            "EHEALTHLAB_MQTT_PORT": str(settings.mqtt_port),
            "EHEALTHLAB_MQTT_USERNAME": settings.mqtt_username,
            "EHEALTHLAB_MQTT_PASSWORD": settings.mqtt_password.get_secret_value(),
            "EHEALTHLAB_STATE_DIR": "/nonexistent-ehealthlab-state",
        }
        self.workers = workers
        self.extra = extra
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        argv = [sys.executable, "-m", "ehealthlab.cli", "ingest", "--workers", str(self.workers)]
        self.process = subprocess.Popen(
            [*argv, *self.extra],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        self.starts += 1

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the command), once it has spawned them."""
        if self.process is None:
            return []
        pid = self.process.pid
        if self.workers == 1:  # the command runs its one worker itself
            return [pid] if self.process.poll() is None else []
        try:
            children = [
                int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            ]
        except OSError:
            return []
        workers = []
        for child in children:  # not multiprocessing's resource tracker
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    workers.append(child)
        return workers

    def wait_for_workers(self, timeout: float = 120.0) -> list[int]:
        assert eventually(lambda: len(self.worker_pids()) >= self.workers, timeout), self.tail()
        return self.worker_pids()

    def kill_one_worker(self, index: int) -> int:
        """SIGKILL one worker process; returns its pid."""
        pid = self.wait_for_workers()[index]
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill(self) -> None:
        """SIGKILL the whole group: the command and every worker."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
        # the workers are reaped by init; wait until none is left holding its client id
        assert eventually(lambda: not _group_alive(self.process.pid), timeout=30)  # type: ignore[union-attr]

    def stop(self) -> int | None:
        """SIGTERM (drain and exit 0), SIGKILL past a deadline; closes the log."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return code

    def close(self) -> None:
        self.stop()
        self.log.close()

    def rss_kib(self) -> dict[int, int]:
        """Resident memory of each worker process (KiB), from /proc."""
        sizes = {}
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes[pid] = int(line.split()[1])
        return sizes

    def tail(self, size: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-size:]


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_until_subscribed(pilot: Pilot, ingest: IngestCommand, partitions: int = 2) -> list[str]:
    """Probe devices, one per partition, publish until each has a reading stored: every
    partition's worker is then subscribed (in shared mode: at least one worker, which is
    enough for nothing to be lost). Returns the probe devices (leave them out of counts)."""
    probes: list[tuple[str, str]] = []
    while len({partition_of(readings_topic(d), partitions) for d, _ in probes}) < partitions:
        probes.append(pilot.register("thermometer"))
    at = datetime.now(UTC) - timedelta(days=40)
    for device_id, password in probes:
        payload = message(
            [{"seq": 1, "metric": "body_temperature", "value": 36.6, "unit": "Cel",
              "at": at.isoformat()}],
            msg_id="probe",
        )  # fmt: skip
        with pilot.device(device_id, password) as connection:

            def landed(
                connection: MqttConnection = connection,
                device_id: str = device_id,
                payload: bytes = payload,
            ) -> bool:
                connection.publish(readings_topic(device_id), payload, timeout=30)
                return eventually(lambda: stored_readings(pilot, [device_id]) > 0, 1.0)

            assert eventually(landed, timeout=180, step=0), ingest.tail()
    return [d for d, _ in probes]


READINGS_T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)


def single_reading(seq: int) -> bytes:
    """A message of one reading: the most messages for the readings, the worst case for
    anything that holds messages."""
    reading = {"seq": seq, "metric": "heart_rate", "value": 60 + seq % 40, "unit": "/min",
               "at": (READINGS_T0 + timedelta(seconds=seq)).isoformat()}  # fmt: skip
    sent_at = datetime.now(UTC).isoformat()
    return orjson.dumps({"schema": "ehl.readings/1", "msg_id": f"m{seq}", "sent_at": sent_at,
                         "readings": [reading]})  # fmt: skip


def blast(pilot: Pilot, device_id: str, password: str, seqs: range) -> None:
    """Publish one message per seq at QoS 1, 500 in flight at a time, each acknowledged."""
    with pilot.device(device_id, password) as device:
        topic = readings_topic(device_id)
        for start in range(seqs.start, seqs.stop, 500):
            mids = [device.publish_nowait(topic, single_reading(s))
                    for s in range(start, min(start + 500, seqs.stop))]  # fmt: skip
            for mid in mids:
                assert device.wait_for(mid, timeout=60)


# -- counting -------------------------------------------------------------------------------------


def stored_readings(pilot: Pilot, devices: list[str]) -> int:
    return int(
        pilot.query("SELECT count(*) FROM readings WHERE device_id = ANY(%s)", devices)[0][0]
    )


@dataclass(frozen=True)
class Tally:
    """What the store holds for a set of devices, counted by the idempotency key."""

    rows: int
    distinct_keys: int
    distinct_seqs: int
    messages: int
    redeliveries: int
    duplicates: int
    rejected: int


def tally(pilot: Pilot, devices: list[str]) -> Tally:
    (rows, keys, seqs), = pilot.query(
        "SELECT count(*), count(DISTINCT (device_id, metric, at)),"
        " count(DISTINCT (device_id, seq)) FROM readings WHERE device_id = ANY(%s)",
        devices,
    )  # fmt: skip
    (messages, redeliveries), = pilot.query(
        "SELECT count(*), coalesce(sum(deliveries - 1), 0) FROM device_messages"
        " WHERE device_id = ANY(%s)",
        devices,
    )  # fmt: skip
    duplicates = pilot.query(
        "SELECT count(*) FROM duplicate_readings WHERE device_id = ANY(%s)", devices
    )[0][0]
    rejected = pilot.query(
        "SELECT count(*) FROM rejected_readings WHERE device_id = ANY(%s)", devices
    )[0][0]
    return Tally(rows, keys, seqs, messages, int(redeliveries), duplicates, rejected)


# -- simulated devices ---------------------------------------------------------------------------


class FleetDevice(threading.Thread):
    """One simulated thermometer on its own thread: takes a measurement every 1/`rate` s
    until it has taken `budget`, and pumps its buffer to the broker all the while."""

    def __init__(self, device: Device, budget: int, fleet: Fleet) -> None:
        super().__init__(daemon=True, name=f"device-{device.device_id}")
        self.device = device
        self.budget = budget
        self.fleet = fleet
        self.taken = 0
        self.error: BaseException | None = None
        #: longest time (s) it held readings while unable to deliver them, and the most held
        self.longest_buffered_s = 0.0
        self.most_buffered = 0
        self._stuck_since: float | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
        finally:
            self.device.close()

    def _run(self) -> None:
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
        last_take = 0.0
        while not self.fleet.stopping.is_set():
            now = time.monotonic()
            taking = self.taken < self.budget
            if taking and now - last_take >= 1 / self.fleet.rate:
                # one reading a minute of device time: every key (device, metric, at) distinct
                taken_at = base + timedelta(minutes=self.taken)
                value = 36.0 + (self.taken % 20) / 10
                if self.device.take(Measurement(taken_at, {"body_temperature": value})):
                    self.taken += 1
                last_take = now
            self.device.pump(datetime.now(UTC))
            self._watch(now)
            if self.taken >= self.budget and self.device.pending_readings() == 0:
                self.fleet.done(self)
            time.sleep(0.02)

    def acknowledged(self) -> int:
        """Readings the broker has acknowledged (taken and no longer buffered)."""
        return self.taken - self.device.pending_readings()

    def _watch(self, now: float) -> None:
        pending = self.device.pending_readings()
        if self.device.connected or pending == 0:
            self._stuck_since = None
            return
        self.most_buffered = max(self.most_buffered, pending)
        if self._stuck_since is None:
            self._stuck_since = now
        self.longest_buffered_s = max(self.longest_buffered_s, now - self._stuck_since)


class Fleet:
    """`count` simulated thermometers with persistent sessions and disk buffers, each
    sending `budget` readings at QoS 1 through `host:port` (the broker or a proxy)."""

    def __init__(self, pilot: Pilot, state_dir: Path, count: int, budget: int, *,
                 port: int, rate: float = 1.0, connect_timeout_s: float = 10,
                 ack_timeout_s: float = 30) -> None:  # fmt: skip
        self.stopping = threading.Event()
        self.rate = rate
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        config = DeviceConfig(
            session_expiry_s=3600,
            retry_after=timedelta(seconds=1),
            connect_timeout_s=connect_timeout_s,
            ack_timeout_s=ack_timeout_s,
        )
        self.threads: list[FleetDevice] = []
        for _ in range(count):
            device_id, password = pilot.register("thermometer")
            registration = DeviceRegistration(device_id, "thermometer", "127.0.0.1", port, password)
            device = Device(registration, state_dir / device_id, config)
            self.threads.append(FleetDevice(device, budget, self))
        self.device_ids = [t.device.device_id for t in self.threads]
        self.total = count * budget

    def start(self) -> Fleet:
        for thread in self.threads:
            thread.start()
        return self

    def done(self, thread: FleetDevice) -> None:
        with self._lock:
            self._finished.add(thread.device.device_id)

    def taken(self) -> int:
        return sum(t.taken for t in self.threads)

    def acknowledged(self) -> int:
        """Readings the broker has acknowledged (taken and no longer buffered)."""
        return sum(t.acknowledged() for t in self.threads)

    def all_delivered(self) -> bool:
        self.check()
        with self._lock:
            return len(self._finished) == len(self.threads)

    def check(self) -> None:
        for thread in self.threads:
            if thread.error is not None:
                raise thread.error

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.check()

    def longest_buffered_s(self) -> float:
        return max(t.longest_buffered_s for t in self.threads)

    def most_buffered(self) -> int:
        return max(t.most_buffered for t in self.threads)

    def reconnections(self) -> int:
        return sum(max(0, t.device.connections - 1) for t in self.threads)
