"""Ingest end to end: readings/s committed and publish-to-commit latency, beside a naive bridge.

Run:  .venv/bin/python bench/ingest.py [--quick] [--profile DIR]

Everything is started here and removed at the end (also on Ctrl-C or an error): a private
PostgreSQL (fsync on, `track_commit_timestamp = on`) and a private Mosquitto (the stack's own
configuration, dynamic security) on free loopback ports, a migrated template database with a
pilot (a start-up, a provider, N blood-pressure monitors, each enrolled to a patient), and one
dynsec client per device. Each scenario gets a fresh database copied from the template.

Scenarios, in one run (goals as issue 13 restated them for this machine, in brackets):
1. `ehealthlab ingest --workers 2` as deployed (partitioned, the default; a subprocess,
   configured with EHEALTHLAB_* variables), devices sending one reading per message, offered
   10,000 msg/s and above what it takes (13,000 msg/s: what is committed, its capacity);
2. the same with 50 readings per message (a device emptying its backlog after an outage),
   at 50,000 readings/s and above (65,000 readings/s) [>= 50,000 readings/s];
3. one reading per message at 5,000 messages/s, for publish-to-commit latency [p99 < 50 ms];
4. bare MQTT: the same publishers offered the same load on the same broker, consumed by two
   `mosquitto_sub` partitioned like ingest's workers: the ceiling; ingest's committed
   single-reading msg/s above is given as a ratio of it [>= 0.7];
5. a reference line, not a goal: a naive bridge (one process, one plain subscription, paho's
   automatic acknowledgement, `validate_message`, one INSERT per reading and a commit per
   message) offered the same load; ingest / naive is the ratio of their committed rates;
6. a user's load (bench/ingest_load.py; --no-load skips it): 20 `mosquitto_pub -V 5 -q 1 -l`
   processes fed their messages at once, into bare subscribers and into ingest, counted from
   the first message the broker received to the last delivery or commit [ratio >= 0.7;
   >= 50,000 readings/s in messages of 50].

How it is measured:
- Publishers are separate processes, each owning a slice of the devices, one MQTT 5
  connection per device (its own dynsec client, as a real device), QoS 1, at most `--window`
  unacknowledged messages per connection, paced by a token bucket to the offered rate. A
  publisher that cannot keep up sends less: the offered rate printed is what was sent.
- Publishers use paho directly, driving all their connections from one thread with a
  selector. `MqttConnection` runs one network thread per connection and hands every publish
  to it through a socket pair: with 100 devices per process that is 100 threads fighting for
  one GIL and a thread switch per message. Measured here at 6,000 msg/s from 100 devices:
  about 200 us of CPU per message that way against about 50 us with the selector; at 10,000
  msg/s the former would need both cores for the publishers alone.
- Committed = `pg_xact_commit_timestamp(xmin)` of the stored rows (readings, and for ingest
  `device_messages`), so nothing depends on when the bench happens to poll. The rate is the
  readings whose commit falls in the measurement window (after a warm-up) per second.
- Latency = commit time of a message's `device_messages` row minus its `sent_at`, which the
  publisher sets, with microseconds, just before the publish and also writes at the head of
  the message's `msg_id` (`device_messages` keeps msg_id, not sent_at).
- Backlog at end = messages published by the end of the window minus messages committed by
  then. After the window ingest is given a bounded time to drain; the drain rate (publishers
  stopped) shows what ingest does with the whole machine to itself.
- CPU: utime+stime from /proc of each component over the window, in % of one core (the
  machine has 2 cores: 200 % is everything).

Figures depend on the machine: compare the rows of one run, not runs on two machines.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import ingest_load
import orjson
import psycopg
from ingest_messages import (
    COMMITTED,
    DEVICE_TYPE,
    NOT_PROBE,
    PROBE,
    STEP_S,
    TEMPLATE,
    encode_message,
    one,
    reading_items,
)

# paho directly for the publishers only (the module docstring says why)
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from psycopg import sql

from ehealthlab.contract.topics import READINGS_WILDCARD, parse_device_topic, readings_topic
from ehealthlab.contract.validation import validate_message
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, log_since, log_size, place_for
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PY_SPY = Path(sys.executable).parent / "py-spy"


# -- what a run is ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    consumer: str  # "ingest", "bare", "paho" or "naive"
    per_message: int
    rate: float  # messages/s offered
    check: str = ""  # "sustained", "capacity" or "latency": how the goal is judged
    goal: float = 0.0  # readings/s (sustained, capacity) or p99 ms (latency)
    profile: bool = False


@dataclass
class Outcome:
    scenario: Scenario
    offered_msgs: float = 0.0
    sent: int = 0
    refused: int = 0
    committed_readings_s: float = 0.0
    committed_msgs_s: float = 0.0
    backlog_msgs: int = 0
    drain_readings_s: float | None = None
    drained: bool = False
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    latency_n: int = 0
    rejected: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    devices: int
    publishers: int
    duration: float
    warmup: float
    drain: float
    window: int
    single_rate: float
    single_max_rate: float
    batch_rate: float
    batch_max_rate: float
    latency_rate: float
    profile_dir: Path | None
    quick: bool = False
    no_load: bool = False
    only: frozenset[str] = frozenset()
    workers: int = 2


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    parser.add_argument("--devices", type=int, default=None, help="simulated devices")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--duration", type=float, default=None, help="seconds per scenario")
    parser.add_argument("--window", type=int, default=20, help="in-flight QoS 1 per device")
    parser.add_argument("--single-rate", type=float, default=10_000, help="msg/s (the goal)")
    parser.add_argument("--single-max-rate", type=float, default=13_000, help="msg/s, above it")
    parser.add_argument("--batch-rate", type=float, default=1_000, help="msg/s of 50 (the goal)")
    parser.add_argument("--batch-max-rate", type=float, default=1_300, help="msg/s, above it")
    parser.add_argument("--latency-rate", type=float, default=5_000, help="msg/s for latency")
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR",
        help="py-spy the ingest workers during scenarios 1 and 2 (raw stacks into DIR)",
    )  # fmt: skip
    parser.add_argument(
        "--no-load", action="store_true",
        help="skip the user's load (mosquitto_pub -l, bench/ingest_load.py)",
    )  # fmt: skip
    parser.add_argument(
        "--only", default="", metavar="NAMES",
        help="run only these scenarios (comma-separated: single, single-max, batch, batch-max,"
        " latency, bare, paho, naive), to compare two builds on one figure",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=2,
        help="ingest workers (ehealthlab ingest --workers N; 2 as deployed)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    duration = args.duration or (5.0 if args.quick else 20.0)
    return Options(
        devices=args.devices or (40 if args.quick else 200),
        publishers=max(1, args.publishers),
        duration=duration,
        warmup=min(3.0, duration / 4),
        drain=4.0 if args.quick else 15.0,
        window=max(1, args.window),
        single_rate=args.single_rate,
        single_max_rate=args.single_max_rate,
        batch_rate=args.batch_rate,
        batch_max_rate=args.batch_max_rate,
        latency_rate=args.latency_rate,
        profile_dir=args.profile,
        quick=args.quick,
        no_load=args.no_load,
        only=frozenset(name for name in args.only.split(",") if name),
        workers=max(1, args.workers),
    )


def scenarios(options: Options) -> list[Scenario]:
    """At the goal's rate (is it sustained: committed keeps up, no backlog builds?), above it
    (what is committed when offered more than it can take: capacity), latency, baseline."""
    profile = options.profile_dir is not None
    return [
        Scenario("single", "ingest 1 rd/msg, 10k offered", "ingest", 1, options.single_rate,
                 "info", 10_000),
        Scenario("single-max", "ingest 1 rd/msg, above", "ingest", 1, options.single_max_rate,
                 "capacity", 10_000, profile),
        Scenario("batch", "ingest 50 rd/msg, goal rate", "ingest", 50, options.batch_rate,
                 "sustained", 50_000),
        Scenario("batch-max", "ingest 50 rd/msg, above", "ingest", 50, options.batch_max_rate,
                 "capacity", 50_000, profile),
        Scenario("latency", "ingest 1 rd/msg, latency", "ingest", 1, options.latency_rate,
                 "latency", 50),
        Scenario("bare", "bare MQTT 1 msg, above", "bare", 1, options.single_max_rate),
        Scenario("paho", "paho receive+ack only, above", "paho", 1, options.single_max_rate),
        Scenario("naive", "naive bridge 1 rd/msg", "naive", 1, options.single_max_rate),
    ]  # fmt: skip


# -- the servers and the pilot ----------------------------------------------------------------


@dataclass
class Device:
    index: int
    device_id: str
    password: str


class Stack:
    """PostgreSQL and Mosquitto of our own, and the pilot registered in both."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.scratch = Path(tempfile.mkdtemp(prefix="ehl-bench-ingest-"))
        self.postgres = PostgresServer(
            place_for(ServiceAccount.for_server("postgres"), self.scratch / "postgres"),
            fsync=True,
            parameters={"track_commit_timestamp": "on"},
        )
        self.broker = MosquittoBroker(
            place_for(ServiceAccount.for_server("mosquitto"), self.scratch / "mosquitto")
        )
        self.devices: list[Device] = []
        self.base_epoch = 0

    def start(self) -> None:
        start_on_free_port(self.postgres)
        start_on_free_port(self.broker)

    def close(self) -> None:
        for server in (self.broker, self.postgres):
            try:
                server.remove()
            except Exception as exc:  # cleaning up: say it and go on
                print(f"warning: could not remove {server.directory}: {exc}", file=sys.stderr)
        shutil.rmtree(self.scratch, ignore_errors=True)

    @property
    def admin(self) -> BrokerAddress:
        b = self.broker
        return BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)

    def url(self, database: str) -> str:
        return self.postgres.url(database)

    def register_pilot(self) -> None:
        """Dynsec clients for the devices, and a template database with the pilot."""
        count = self.options.devices
        self.devices = [
            Device(i, f"bench-bpm-{i:04d}", secrets.token_hex(12)) for i in range(count)
        ]
        with DynamicSecurity(self.admin) as dynsec:
            dynsec.ensure_platform_role(self.broker.admin_username)
            for device in self.devices:
                dynsec.create_device_client(device.device_id, device.password)
        now = int(time.time())
        # readings are in the past (three days ago onwards): never "in the future", and the
        # busiest device of the longest scenario stays well short of now (checked in main)
        self.base_epoch = now - now % 60 - 3 * 86400
        start_day = datetime.fromtimestamp(self.base_epoch, UTC).date() - timedelta(days=2)
        self.postgres.create_database(TEMPLATE)
        with psycopg.connect(self.url(TEMPLATE), autocommit=True) as conn:
            migrate(conn)
            load_municipalities(conn)
            fill_pilot(conn, [d.device_id for d in self.devices], start_day)
            # the months the readings fall in (ingest's writer would make them on its first
            # batch; the naive bridge would not): every scenario starts from the same tables
            conn.execute(
                "SELECT ehl_ensure_reading_partitions(%s)",
                ([datetime.fromtimestamp(self.base_epoch - 86400, UTC), datetime.now(UTC)],),
            )

    def fresh_database(self, name: str) -> str:
        with psycopg.connect(self.postgres.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(TEMPLATE)
                )
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.postgres.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))  # fmt: skip


def fill_pilot(conn: psycopg.Connection[Any], device_ids: list[str], start_day: date) -> None:
    """A start-up owning the devices, a provider, one patient enrolled on each device."""
    with conn.transaction():
        startup = one(conn, "INSERT INTO organisations (kind, name) VALUES ('startup', 'Bench')"
                            " RETURNING id")  # fmt: skip
        provider = one(conn, "INSERT INTO organisations (kind, name)"
                             " VALUES ('provider', 'Bench ASL') RETURNING id")  # fmt: skip
        municipality = one(conn, "SELECT istat_code FROM municipalities ORDER BY 1 LIMIT 1")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                " VALUES (%s, %s, %s, 'BPM-1', %s)",
                [(d, startup, DEVICE_TYPE, d) for d in device_ids],
            )
            for device_id in device_ids:
                cur.execute(
                    "WITH p AS (INSERT INTO patients (organisation_id, identifier_hash, label)"
                    " VALUES (%s, %s, %s) RETURNING id)"
                    " INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
                    " SELECT id, %s, %s, %s FROM p",
                    (provider, secrets.token_bytes(32), f"patient of {device_id}", device_id,
                     municipality, start_day),
                )  # fmt: skip


# -- publishers (separate processes) ----------------------------------------------------------


@dataclass(frozen=True)
class PublisherPlan:
    host: str
    port: int
    devices: tuple[tuple[int, str, str], ...]  # (index, device_id, password)
    per_message: int
    rate: float  # messages/s for this process
    warmup: float  # seconds from the start to the measurement window
    duration: float  # seconds from the start to the end
    window: int
    base_epoch: int
    first_reading: int  # per-device counter to start from (0: each scenario has a fresh db)


def run_publisher(plan: PublisherPlan, ready: Any, go: Any, start: Any, results: Any) -> None:
    """One process: connect its devices, wait for the common start time, publish on schedule
    for the duration, report counts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    try:
        results.put(_publish(plan, ready, go, start))
    except Exception as exc:  # the parent fails loudly
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def _publish(plan: PublisherPlan, ready: Any, go: Any, start: Any) -> dict[str, Any]:  # noqa: PLR0912, PLR0915
    n = len(plan.devices)
    inflight = [0] * n
    connected = [False] * n
    counts = Counter[str]()
    clients: list[paho.Client] = []
    topics = [readings_topic(device_id) for _, device_id, _ in plan.devices]
    counters = [plan.first_reading] * n

    def client_for(slot: int, device_id: str, password: str) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        client.username_pw_set(device_id, password)
        client.max_inflight_messages_set(plan.window)
        client.max_queued_messages_set(0)

        def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
            connected[slot] = not reason.is_failure

        def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
            inflight[slot] -= 1
            counts["acked"] += 1
            if reason.is_failure:
                counts["refused"] += 1

        client.on_connect = on_connect
        client.on_publish = on_publish
        client.connect(plan.host, plan.port, keepalive=60, clean_start=True)
        return client

    selector = selectors.DefaultSelector()
    try:
        for slot, (_, device_id, password) in enumerate(plan.devices):
            client = client_for(slot, device_id, password)
            clients.append(client)
            sock = client.socket()
            assert sock is not None
            selector.register(sock.fileno(), selectors.EVENT_READ, slot)
        deadline = time.monotonic() + 30
        while not all(connected) and time.monotonic() < deadline:
            for key, _ in selector.select(0.05):
                clients[key.data].loop_read()
        if not all(connected):
            return {"error": f"{n - sum(connected)} of {n} devices could not connect"}
        ready.set()
        if not go.wait(120):
            return {"error": "no start signal"}
        t_start = float(start.value)
        t_measure, t_end = t_start + plan.warmup, t_start + plan.duration
        time.sleep(max(0.0, t_start - time.time()))
        rate = plan.rate
        burst = max(1.0, rate * 0.02)  # at most 20 ms of schedule is caught up at once
        tokens, last, turn = 0.0, time.time(), 0
        pending_writes: set[int] = set()
        sent = sent_in_window = 0
        while True:
            now = time.time()
            if now >= t_end:
                break
            tokens = min(tokens + (now - last) * rate, burst)
            last = now
            stuck = False
            while tokens >= 1:
                for _ in range(n):  # the next device with room in its window
                    slot = turn
                    turn = turn + 1 if turn + 1 < n else 0
                    if inflight[slot] < plan.window:
                        break
                else:
                    stuck = True
                    break
                index = plan.devices[slot][0]
                first = counters[slot]
                counters[slot] = first + plan.per_message
                payload = encode_message(
                    f"{index}:{first}",
                    reading_items(first, plan.per_message, index, plan.base_epoch),
                )
                info = clients[slot].publish(topics[slot], payload, qos=1)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    counts["publish_errors"] += 1
                    stuck = True
                    break
                inflight[slot] += 1
                sent += 1
                if now >= t_measure:
                    sent_in_window += 1
                tokens -= 1
                if clients[slot].want_write():
                    pending_writes.add(slot)
            for slot in list(pending_writes):
                clients[slot].loop_write()
                if not clients[slot].want_write():
                    pending_writes.discard(slot)
            wait = 0.0 if (tokens >= 1 and not stuck) else min(0.005, max(0.0, (1 - tokens) / rate))
            for key, _ in selector.select(wait):
                clients[key.data].loop_read()
        # the last PUBACKs, for at most 5 s
        deadline = time.monotonic() + 5
        while sum(inflight) > 0 and time.monotonic() < deadline:
            for slot in list(pending_writes):
                clients[slot].loop_write()
            for key, _ in selector.select(0.05):
                clients[key.data].loop_read()
        return {
            "sent": sent,
            "sent_in_window": sent_in_window,
            "acked": counts["acked"],
            "refused": counts["refused"],
            "publish_errors": counts["publish_errors"],
            "unacked": sum(inflight),
        }
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()
        selector.close()


# -- the naive bridge (a separate process) ----------------------------------------------------

NAIVE_INSERT = """
    INSERT INTO readings (device_id, metric, at, value, measured_at, received_at, seq, msg_id,
                          clock_offset_s, clock_corrected, reported_unit, patient_id)
    VALUES (%(device_id)s, %(metric)s, %(at)s, %(value)s, %(measured_at)s, %(received_at)s,
            %(seq)s, %(msg_id)s, %(offset)s, %(corrected)s, %(reported_unit)s,
            (SELECT e.patient_id FROM enrolments e
             WHERE e.device_id = %(device_id)s
               AND ehl_pilot_day(%(measured_at)s) >= e.start_date
               AND (e.end_date IS NULL OR ehl_pilot_day(%(measured_at)s) <= e.end_date)
             LIMIT 1))
    ON CONFLICT DO NOTHING
"""


def run_naive_bridge(broker: BrokerAddress, url: str, ready: Any, stop: Any, results: Any) -> None:
    """What most MQTT-to-database bridges are: a plain subscription, paho's automatic ack,
    and in on_message a validation, one INSERT per reading and one commit per message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    counts = Counter[str]()
    try:
        with psycopg.connect(url) as conn:
            types: dict[str, str] = dict(
                conn.execute("SELECT device_id, device_type FROM devices").fetchall()
            )
            conn.commit()

            def on_message(message: ReceivedMessage) -> None:
                topic = parse_device_topic(message.topic)
                device_type = types.get(topic.device_id) if topic is not None else None
                if topic is None or device_type is None:
                    counts["unknown"] += 1
                    return
                outcome = validate_message(
                    message.payload, device_type=device_type, received_at=message.received_at
                )
                offset = outcome.clock_offset_s or 0.0
                try:
                    store(outcome, topic.device_id, offset)
                except psycopg.Error as exc:
                    conn.rollback()
                    counts["errors"] += 1
                    if counts["errors"] == 1:
                        print(f"naive bridge: {exc}", file=sys.stderr)
                    return
                counts["messages"] += 1
                counts["rejected"] += len(outcome.rejected)

            def store(outcome: Any, device_id: str, offset: float) -> None:
                for r in outcome.accepted:
                    conn.execute(
                        NAIVE_INSERT,
                        {
                            "device_id": device_id, "metric": r.metric, "at": r.at,
                            "value": r.value, "measured_at": r.measured_at,
                            "received_at": outcome.received_at, "seq": r.seq,
                            "msg_id": outcome.msg_id or "", "offset": offset,
                            "corrected": r.clock_corrected,
                            "reported_unit": None if r.reported_unit == r.unit else r.reported_unit,
                        },
                    )  # fmt: skip
                conn.commit()

            connection = MqttConnection(broker, f"naive-bridge-{uuid.uuid4().hex[:6]}",
                                        on_message=on_message)  # fmt: skip
            connection.connect()
            try:
                connection.subscribe(READINGS_WILDCARD, qos=1)
                ready.set()
                stop.wait(600)
            finally:
                connection.close()
        results.put(dict(counts))
    except Exception as exc:  # reported to the parent
        results.put({"error": f"{type(exc).__name__}: {exc}"})


# -- CPU accounting ---------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of a process, None when it is gone."""
    return _proc_stat_of(Path(f"/proc/{pid}/stat"))


def _proc_stat_of(path: Path) -> tuple[int, int] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(roots: Sequence[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: set[int] = set()
    todo = [r for r in roots if r]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


class CpuMeter:
    """CPU seconds of groups of processes (and their descendants) between start and stop.

    A group named in `by_thread` is also split into its processes' main threads and their
    other threads (in an ingest worker: the batch loop, and paho's network thread)."""

    def __init__(self, groups: dict[str, Sequence[int]], by_thread: Sequence[str] = ()) -> None:
        self.groups = {name: descendants(pids) for name, pids in groups.items()}
        self.by_thread = [name for name in by_thread if name in self.groups]
        self.start_ticks = self._ticks()
        self.start_machine = self._machine()
        self.started = time.monotonic()

    def _ticks(self) -> dict[str, int]:
        ticks = {
            name: sum(s[1] for p in pids if (s := _proc_stat(p)) is not None)
            for name, pids in self.groups.items()
        }
        for name in self.by_thread:
            main = other = 0
            for pid in self.groups[name]:
                with contextlib.suppress(OSError):
                    for task in Path(f"/proc/{pid}/task").iterdir():
                        stat = _proc_stat_of(task / "stat")
                        if stat is None:
                            continue
                        if int(task.name) == pid:
                            main += stat[1]
                        else:
                            other += stat[1]
            ticks[f"{name} main threads"] = main
            ticks[f"{name} other threads"] = other
        return ticks

    @staticmethod
    def _machine() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        """(% of a core per group, with `others` and `machine`; % per thread kind)."""
        elapsed = time.monotonic() - self.started
        ticks = self._ticks()
        percent = {
            name: 100 * (ticks[name] - self.start_ticks[name]) / CLOCK_TICKS / elapsed
            for name in ticks
        }
        shares = {name: percent[name] for name in self.groups}
        threads = {name: v for name, v in percent.items() if name not in self.groups}
        busy, total = self._machine()
        cores = os.cpu_count() or 1
        machine = (
            100 * cores * (busy - self.start_machine[0]) / max(1, total - self.start_machine[1])
        )
        # whatever else was busy (kernel threads, other users of the machine) took CPU too
        shares["others"] = max(0.0, machine - sum(shares.values()))
        shares["machine"] = machine
        return shares, threads


# -- one scenario -----------------------------------------------------------------------------


class Run:
    """Servers, pilot and the scenarios of one bench run; `close` leaves nothing behind."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stack = Stack(options)
        self.context = multiprocessing.get_context("spawn")
        self.children: list[Any] = []  # processes of ours still to stop
        self.next_worker = 1

    def close(self) -> None:
        for child in self.children:
            stop_child(child)
        self.children.clear()
        self.stack.close()

    # scenario plumbing

    def publishers(self, scenario: Scenario) -> tuple[list[Any], Any, tuple[float, float, float]]:
        """Start the publishers; once all devices are connected, give them a common start
        time (1 s ahead). Returns processes, their result queue, (start, measure, end)."""
        options = self.options
        ready_events = []
        results = self.context.Queue()
        go = self.context.Event()
        start = self.context.Value("d", 0.0)
        processes = []
        count = min(options.publishers, len(self.stack.devices))
        for p in range(count):
            mine = tuple((d.index, d.device_id, d.password) for d in self.stack.devices[p::count])
            plan = PublisherPlan(
                host=self.stack.broker.host, port=self.stack.broker.port, devices=mine,
                per_message=scenario.per_message, rate=scenario.rate / count,
                warmup=options.warmup, duration=options.duration, window=options.window,
                base_epoch=self.stack.base_epoch, first_reading=0,  # a fresh database
            )  # fmt: skip
            ready = self.context.Event()
            process = self.context.Process(
                target=run_publisher, args=(plan, ready, go, start, results), name=f"publisher-{p}"
            )
            process.start()
            self.children.append(process)
            processes.append(process)
            ready_events.append(ready)
        deadline = time.monotonic() + 60
        for ready, process in zip(ready_events, processes, strict=True):
            while not ready.wait(0.2):
                if not process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{process.name} did not connect its devices: "
                                       f"{drain_queue(results)}")  # fmt: skip
        t_start = time.time() + 1.0
        start.value = t_start
        go.set()
        timing = (t_start, t_start + options.warmup, t_start + options.duration)
        return processes, results, timing

    def collect(self, processes: list[Any], results: Any, outcome: Outcome) -> None:
        reports: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.options.duration + 60
        while len(reports) < len(processes) and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                reports.append(results.get(timeout=1))
        for process in processes:
            process.join(timeout=10)
            stop_child(process)
            self.children.remove(process)
        errors = [r["error"] for r in reports if "error" in r]
        if errors or len(reports) < len(processes):
            raise RuntimeError(f"publishers failed: {errors or 'no report'}")
        outcome.sent = sum(r["acked"] for r in reports)
        outcome.refused = sum(r["refused"] + r["publish_errors"] + r["unacked"] for r in reports)
        window = self.options.duration - self.options.warmup
        outcome.offered_msgs = sum(r["sent_in_window"] for r in reports) / window

    def run(self, scenario: Scenario) -> Outcome:
        if scenario.consumer == "bare":
            return ingest_load.run_bare(self, Outcome(scenario))
        if scenario.consumer == "paho":
            return ingest_load.run_bare(self, Outcome(scenario), client="paho")
        database = f"bench_{scenario.key}"
        url = self.stack.fresh_database(database)
        try:
            if scenario.consumer == "ingest":
                return self.run_ingest(scenario, url)
            return self.run_naive(scenario, url)
        finally:
            self.stack.drop_database(database)

    # ingest

    def run_ingest(self, scenario: Scenario, url: str) -> Outcome:
        ingest, log, names = self.start_ingest(url)
        outcome = Outcome(scenario)
        try:
            processes, results, (_, t_measure, t_end) = self.publishers(scenario)
            sleep_until(t_measure)
            meter = CpuMeter(
                self.cpu_groups(ingest=[ingest.pid], publishers=processes), by_thread=["ingest"]
            )
            spy = self.start_profile(scenario, ingest.pid, t_end - t_measure)
            sleep_until(t_end)
            outcome.cpu, outcome.threads = meter.stop()
            self.collect(processes, results, outcome)
            self.wait_drained(url, outcome, t_end)
            if spy is not None:
                outcome.profile = self.finish_profile(spy, scenario)
            if ingest.poll() is not None:
                raise RuntimeError(f"ingest exited early:\n{tail(log)}")
        finally:
            self.stop_ingest(ingest, names)
            log.close()
        self.measure(url, outcome, t_measure, t_end, latency=True)
        return outcome

    def start_ingest(self, url: str) -> tuple[subprocess.Popen[bytes], Any, list[str]]:
        """`ehealthlab ingest --workers 2` as deployed (partitioned, the default), under a
        fresh name, so no scenario inherits another's sessions; with its client ids."""
        prefix = f"bench-{self.next_worker}"
        self.next_worker += 1
        n = self.options.workers
        names = [f"{prefix}-{k}.p{k}of{n}" for k in range(1, n + 1)]
        stack = self.stack
        env = {
            **os.environ,
            "EHEALTHLAB_DATABASE_URL": url,
            "EHEALTHLAB_MQTT_HOST": stack.broker.host,
            "EHEALTHLAB_MQTT_PORT": str(stack.broker.port),
            "EHEALTHLAB_MQTT_USERNAME": stack.broker.admin_username,
            "EHEALTHLAB_MQTT_PASSWORD": stack.broker.admin_password,
            "EHEALTHLAB_STATE_DIR": "/nonexistent-ehealthlab-bench-state",
        }
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in run_ingest
        offset = log_size(stack.broker.log_file)
        process = subprocess.Popen(
            [sys.executable, "-m", "ehealthlab.cli", "ingest", "--workers", str(n), "--name",
             prefix],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        self.children.append(process)
        try:
            self.wait_subscribed(process, log, url, names, offset)
        except BaseException:
            self.stop_ingest(process, names)
            log.close()
            raise
        return process, log, names

    def wait_subscribed(
        self, process: subprocess.Popen[bytes], log: Any, url: str, names: list[str], offset: int
    ) -> None:
        """Both workers connected (the broker's log says so) and a probe message stored: a
        message published before a worker's subscription exists is, by MQTT, for nobody."""
        deadline = time.monotonic() + 60
        log_file = self.stack.broker.log_file
        while not all(f" as {n} " in log_since(log_file, offset) for n in names):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not connect:\n{tail(log)}")
            time.sleep(0.1)
        device = self.stack.devices[0]
        probe_connection = MqttConnection(
            self.stack.admin.as_user(device.device_id, device.password), device.device_id
        )
        with probe_connection, psycopg.connect(url, autocommit=True) as conn:
            for attempt in range(200):
                items = reading_items(0, 1, device.index, self.stack.base_epoch - 86400)
                items[0]["seq"] = attempt
                probe = orjson.dumps({"schema": "ehl.readings/1", "msg_id": f"{PROBE}{attempt}",
                                      "sent_at": datetime.now(UTC).isoformat(),
                                      "readings": items})  # fmt: skip
                probe_connection.publish(readings_topic(device.device_id), probe)
                for _ in range(5):
                    time.sleep(0.1)
                    if one(conn, "SELECT count(*) FROM device_messages") > 0:
                        time.sleep(0.5)  # the second worker's SUBSCRIBE is a moment behind
                        return
                if process.poll() is not None or time.monotonic() > deadline:
                    break
        raise RuntimeError(f"ingest stored no probe message:\n{tail(log)}")

    def stop_ingest(self, process: subprocess.Popen[bytes], names: list[str]) -> None:
        """SIGTERM (workers store what they hold; partitioned, they keep their sessions);
        SIGKILL if stuck; then end the sessions, so they do not collect the next runs'
        messages in the broker."""
        stop_child(process, timeout=30)
        if process in self.children:
            self.children.remove(process)
        for name in names:
            with contextlib.suppress(Exception):
                MqttConnection(self.stack.admin, name, clean_start=True).connect().close()

    def wait_drained(self, url: str, outcome: Outcome, t_end: float) -> None:
        """Give ingest up to `drain` seconds to store what was published."""
        deadline = time.monotonic() + self.options.drain
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                query = f"SELECT count(*) FROM device_messages WHERE {NOT_PROBE}"  # noqa: S608
                stored = one(conn, query)
                if stored >= outcome.sent:
                    outcome.drained = True
                    return
                time.sleep(0.25)

    # naive

    def run_naive(self, scenario: Scenario, url: str) -> Outcome:
        outcome = Outcome(scenario)
        ready, stop, results = self.context.Event(), self.context.Event(), self.context.Queue()
        bridge = self.context.Process(
            target=run_naive_bridge, args=(self.stack.admin, url, ready, stop, results),
            name="naive-bridge",
        )  # fmt: skip
        bridge.start()
        self.children.append(bridge)
        try:
            if not ready.wait(30):
                raise RuntimeError(f"the naive bridge did not subscribe: {drain_queue(results)}")
            processes, publisher_results, (_, t_measure, t_end) = self.publishers(scenario)
            sleep_until(t_measure)
            meter = CpuMeter(self.cpu_groups(naive=[bridge.pid or 0], publishers=processes))
            sleep_until(t_end)
            outcome.cpu, outcome.threads = meter.stop()
            self.collect(processes, publisher_results, outcome)
            stop.set()
            with contextlib.suppress(Exception):
                report = results.get(timeout=20)
                if "error" in report:
                    raise RuntimeError(f"the naive bridge failed: {report['error']}")
        finally:
            stop.set()
            bridge.join(timeout=20)
            stop_child(bridge)
            self.children.remove(bridge)
        self.measure(url, outcome, t_measure, t_end, latency=False)
        return outcome

    # figures

    def cpu_groups(self, **roles: Sequence[Any]) -> dict[str, Sequence[int]]:
        groups: dict[str, Sequence[int]] = {
            "postgres": [self.stack.postgres.pid() or 0],
            "mosquitto": [self.stack.broker.pid() or 0],
        }
        for role, members in roles.items():
            groups[role] = [m if isinstance(m, int) else m.pid for m in members]
        return groups

    def measure(self, url: str, outcome: Outcome, t_measure: float, t_end: float,
                *, latency: bool) -> None:  # fmt: skip
        window = t_end - t_measure
        commit = COMMITTED
        with psycopg.connect(url, autocommit=True) as conn:
            readings = one(conn, f"SELECT count(*) FROM readings WHERE {NOT_PROBE}"  # noqa: S608
                           f" AND {commit} > %s AND {commit} <= %s", t_measure, t_end)  # fmt: skip
            outcome.committed_readings_s = readings / window
            outcome.committed_msgs_s = outcome.committed_readings_s / outcome.scenario.per_message
            table = "device_messages" if latency else "readings"
            committed_by_end = one(conn, f"SELECT count(*) FROM {table}"  # noqa: S608
                                   f" WHERE {NOT_PROBE} AND {commit} <= %s", t_end)  # fmt: skip
            if latency:
                outcome.backlog_msgs = outcome.sent - committed_by_end
                outcome.rejected = one(conn, "SELECT count(*) FROM rejected_readings")
                self.measure_latency(conn, outcome, t_measure, t_end)
                self.measure_drain(conn, outcome, t_end)
            else:
                outcome.backlog_msgs = outcome.sent - committed_by_end

    @staticmethod
    def measure_latency(conn: psycopg.Connection[Any], outcome: Outcome, t_measure: float,
                        t_end: float) -> None:  # fmt: skip
        """Commit minus sent_at of the messages sent in the window (all of them, when ingest
        drained; else the figures would flatter it and are not given)."""
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99, 0.999]) WITHIN GROUP (ORDER BY ms),"  # noqa: S608
            "       max(ms), count(*)"
            " FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000"
            "              - split_part(msg_id, ':', 1)::bigint / 1000.0 AS ms"
            "       FROM device_messages"
            f"      WHERE {NOT_PROBE}"
            "         AND split_part(msg_id, ':', 1)::bigint BETWEEN %s AND %s) s",
            (int(t_measure * 1e6), int(t_end * 1e6)),
        ).fetchone()
        assert row is not None
        outcome.latency_n = int(row[2])
        if outcome.drained and row[0] is not None:
            outcome.p50_ms, outcome.p99_ms, outcome.p999_ms = (float(v) for v in row[0])
            outcome.max_ms = float(row[1])

    @staticmethod
    def measure_drain(conn: psycopg.Connection[Any], outcome: Outcome, t_end: float) -> None:
        """Readings/s committed after the publishers stopped, when there was a backlog of
        more than a second of work: ingest with the machine to itself."""
        if outcome.backlog_msgs * outcome.scenario.per_message < outcome.committed_readings_s:
            return
        commit = COMMITTED
        row = conn.execute(
            f"SELECT count(*), max({commit}) FROM readings"  # noqa: S608
            f" WHERE {NOT_PROBE} AND {commit} > %s",
            (t_end + 0.5,),
        ).fetchone()
        assert row is not None
        if row[0] and row[1] is not None and float(row[1]) > t_end + 1.5:
            outcome.drain_readings_s = int(row[0]) / (float(row[1]) - t_end - 0.5)

    # profile

    def start_profile(self, scenario: Scenario, pid: int, seconds: float) -> Any:
        directory = self.options.profile_dir
        if not scenario.profile or directory is None:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / f"ingest-{scenario.key}.txt"
        process = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
             "--rate", "100", "--duration", str(max(1, int(seconds) - 1)), "--format", "raw",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.children.append(process)
        return process, out

    def finish_profile(self, spy: tuple[subprocess.Popen[bytes], Path], scenario: Scenario
                       ) -> list[str]:  # fmt: skip
        process, out = spy
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stop_child(process)
            return ["py-spy did not finish"]
        finally:
            if process in self.children:
                self.children.remove(process)
        if not out.exists():
            return [f"py-spy wrote nothing: {err.decode(errors='replace').strip()[-300:]}"]
        return summarise_profile(out.read_text(), f"{scenario.title}: {out}")


# -- the profile ------------------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """'write_row (psycopg/copy.py:123)' -> 'write_row (psycopg/copy.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def _area(frame: str) -> str:
    path = frame.partition(" (")[2]
    for area in ("paho", "psycopg", "ehealthlab/contract", "ehealthlab/ingest",
                 "ehealthlab/store", "ehealthlab/mqtt", "orjson", "queue", "threading",
                 "datetime", "dataclasses", "selectors", "socket"):  # fmt: skip
        if area in path:
            return area
    return "other"


#: the steps of an ingest worker, by a function on the stack; the first that matches wins
STEPS = (
    ("network thread: read, decode, on_message, queue put", "Client.loop_read"),
    ("network thread: write (PUBACKs, feedback)", "Client.loop_write"),
    ("network thread: select, wake-ups", "Client._thread_main"),
    ("validate + rows (judge)", "judge"),
    ("readings: COPY, INSERT ... RETURNING, classify", "ReadingWriter.write_in_transaction"),
    ("device_messages COPY + last_seen UPDATE", "_write_message_logs"),
    ("settle (log row, feedback)", "settle"),
    ("alerts", "IngestWorker._raise_alerts"),
    ("rejections", "write_rejections"),
    ("partitions, staging (prepare)", "ReadingWriter.prepare"),
    ("ack (queue PUBACKs for the network thread)", "IngestWorker._acknowledge"),
    ("collect (queue get)", "IngestWorker._collect"),
    ("rest of _write_batch (commit, stats)", "IngestWorker._write_batch"),
)
#: frames every sample has (process start, thread start, the loops): not worth listing
_WRAPPERS = (
    "(threading.py)", "(multiprocessing/", "(<string>)", "run_worker (", "IngestWorker.run (",
    "IngestWorker._store (", "Client.loop_forever (", "Client._thread_main (",
)  # fmt: skip


def summarise_profile(raw: str, title: str, top: int = 15) -> list[str]:
    """From py-spy's raw (collapsed) stacks of the worker processes (all their threads):
    CPU by step of the worker, top functions by own and by inclusive time, and by library."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame_name(f) for f in stack.split(";")
            if not f.startswith(("process ", "thread ")) and " (" in f
        ]  # fmt: skip
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for name in set(frames):
            if not any(w in name for w in _WRAPPERS):
                inclusive[name] += count
        functions = {f.partition(" (")[0] for f in frames}
        step = next((label for label, function in STEPS if function in functions), "other")
        steps[step] += count
    if not total:
        return [f"{title}: no samples"]

    def share(c: int) -> str:
        return f"{100 * c / total:5.1f} %"

    lines = [f"profile of {title} ({total} samples of running threads, 100 Hz)"]
    lines.append("  by step of the worker:")
    lines += [f"    {share(c)}  {label}" for label, c in steps.most_common()]
    lines.append("  own time (leaf function):")
    lines += [f"    {share(c)}  {name}" for name, c in own.most_common(top)]
    lines.append("  inclusive time (without the thread and loop frames every sample has):")
    lines += [f"    {share(c)}  {name}" for name, c in inclusive.most_common(top)]
    lines.append("  own time by library: " + ", ".join(
        f"{area} {100 * c / total:.0f} %" for area, c in areas.most_common()))  # fmt: skip
    return lines


# -- helpers ----------------------------------------------------------------------------------


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def drain_queue(q: Any) -> list[Any]:
    found = []
    with contextlib.suppress(Exception):
        while True:
            found.append(q.get_nowait())
    return found


def stop_child(child: Any, timeout: float = 10.0) -> None:
    """Stop one process we started (SIGTERM, then SIGKILL), by its own handle."""
    if isinstance(child, subprocess.Popen):
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in sorted(descendants([child.pid]) - {child.pid}):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                child.kill()
                child.wait(10)
        return
    if child.is_alive():
        child.terminate()
        child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join(5)


def tail(log: Any, size: int = 3000) -> str:
    log.seek(0)
    return str(log.read().decode(errors="replace")[-size:])


# -- output -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def report(outcomes: list[Outcome], options: Options) -> list[str]:
    header = (f"{'scenario':<28} {'offered':>22} {'committed/s':>26} {'p50':>8} {'p99':>8}"
              f" {'backlog@end':>12}  goal")  # fmt: skip
    lines = [header, "-" * len(header)]
    for o in outcomes:
        s = o.scenario
        offered = f"{o.offered_msgs:,.0f} msg/s"
        if s.per_message > 1:
            offered = f"{o.offered_msgs * s.per_message:,.0f} rd/s ({o.offered_msgs:,.0f} msg)"
        committed = f"{o.committed_readings_s:,.0f} readings/s"
        if s.per_message > 1:
            committed += f" ({o.committed_msgs_s:,.0f} msg)"
        lines.append(
            f"{s.title:<28} {offered:>22} {committed:>26} {_ms(o.p50_ms):>8} {_ms(o.p99_ms):>8}"
            f" {o.backlog_msgs:>12,}  {goal_verdict(o)}"
        )
    lines.extend(ratio_lines(outcomes))
    lines.append("")
    lines.append("details:")
    for o in outcomes:
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in o.cpu.items())
        extra = []
        if o.drain_readings_s is not None:
            extra.append(f"drain after publishers stopped {o.drain_readings_s:,.0f} readings/s")
        if o.scenario.consumer == "ingest":
            extra.append("drained" if o.drained else f"NOT drained within {options.drain:.0f} s")
            if o.p999_ms is not None:
                extra.append(
                    f"p99.9 {_ms(o.p999_ms)}, max {_ms(o.max_ms)} over {o.latency_n:,} msgs"
                )
            if o.rejected:
                extra.append(f"{o.rejected} readings REJECTED")
        if o.refused:
            extra.append(f"{o.refused} publishes refused/unacked")
        lines.append(f"  {o.scenario.title}: published {o.sent:,} msgs; cpu (% of a core): {cpu}")
        if o.threads:
            lines.append("    threads: " + ", ".join(f"{k} {v:.0f}%" for k, v in o.threads.items()))
        if extra:
            lines.append("    " + "; ".join(extra))
    return lines


def ratio_lines(outcomes: list[Outcome]) -> list[str]:
    """Ingest's single-reading capacity beside bare MQTT (the goal) and the naive bridge."""
    lines: list[str] = []
    naive = next((o for o in outcomes if o.scenario.consumer == "naive"), None)
    single = next((o for o in outcomes if o.scenario.key == "single-max"), None)
    bare = next((o for o in outcomes if o.scenario.consumer == "bare"), None)
    if bare is not None and single is not None:
        ratio = single.committed_msgs_s / max(bare.committed_msgs_s, 1e-9)
        lines.append(f"ingest / bare MQTT, same publishers and broker (1 rd/msg): {ratio:.2f}x"
                     f"   (goal >= 0.7: {'met' if ratio >= 0.7 else 'NOT met'})")  # fmt: skip
    paho = next((o for o in outcomes if o.scenario.consumer == "paho"), None)
    if bare is not None and paho is not None:
        ratio = paho.committed_msgs_s / max(bare.committed_msgs_s, 1e-9)
        lines.append(f"paho receive+ack only / bare MQTT: {ratio:.2f}x   (the ceiling of an"
                     " ingest on the MQTT client, whatever it does with the messages)")  # fmt: skip
    if paho is not None and single is not None:
        ratio = single.committed_msgs_s / max(paho.committed_msgs_s, 1e-9)
        lines.append(f"ingest / paho receive+ack only: {ratio:.2f}x")
    if naive is not None and single is not None:
        ratio = single.committed_readings_s / max(naive.committed_readings_s, 1e-9)
        lines.append(f"ingest / naive bridge, same offered load (1 rd/msg): {ratio:.1f}x"
                     "   (a reference line, not a goal)")  # fmt: skip
    return lines


def goal_verdict(o: Outcome) -> str:
    """Kept up: committed at least 98 % of what was offered (slack for the publishers'
    pacing), with at most a second's worth of messages left in the broker at the end.
    Sustained: kept up, at the goal's readings/s. Capacity: what was committed while more
    was offered (unless it kept up, the backlog grows: not sustainable). Latency: p99 under
    the goal, having kept up (else the percentiles would not be of that rate)."""
    s = o.scenario
    backlog_ok = o.backlog_msgs <= o.offered_msgs and o.committed_msgs_s >= 0.98 * o.offered_msgs
    if s.check == "sustained":
        met = o.committed_readings_s >= 0.98 * s.goal and backlog_ok
        return f">= {s.goal:,.0f} rd/s sustained: {'met' if met else 'NOT met'}"
    if s.check == "capacity":
        factor = o.committed_readings_s / s.goal
        if backlog_ok:  # it kept up: the capacity is higher still
            return f"kept up: capacity >= {factor:.2f}x the goal"
        return f"backlog grows: capacity {factor:.2f}x the goal"
    if s.check == "info":
        return "the goal is the ratio to bare MQTT (below)"
    if s.check == "latency":
        met = o.p99_ms is not None and o.p99_ms < s.goal and backlog_ok
        return f"p99 < {s.goal:.0f} ms: {'met' if met else 'NOT met'}"
    return "baseline"


# -- main -------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    started = time.monotonic()
    longest = max(options.single_max_rate, options.batch_max_rate * 50, options.latency_rate)
    per_device = longest * (options.duration + 2) / options.devices  # readings, one scenario
    if per_device / 3 * STEP_S > 3 * 86400 - 3600:
        print("too many readings per device for the time span; add --devices", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    run = Run(options)
    outcomes: list[Outcome] = []
    load: list[ingest_load.LoadOutcome] = []
    try:
        print(f"starting PostgreSQL (fsync on) and Mosquitto; registering {options.devices} "
              "devices ...", flush=True)  # fmt: skip
        run.stack.start()
        run.stack.register_pilot()
        print(f"ready in {time.monotonic() - started:.0f} s; {options.duration:.0f} s per "
              f"scenario ({options.warmup:.0f} s warm-up), {options.publishers} publisher "
              f"processes, window {options.window}/device", flush=True)  # fmt: skip
        for scenario in scenarios(options):
            if options.only and scenario.key not in options.only:
                continue
            print(f"- {scenario.title} at {scenario.rate:,.0f} msg/s offered ...", flush=True)
            outcome = run.run(scenario)
            outcomes.append(outcome)
            print(f"  {outcome.committed_readings_s:,.0f} readings/s committed", flush=True)
        if not options.no_load:
            load = ingest_load.run_load(run, options.quick)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        run.close()
    print()
    for line in report(outcomes, options):
        print(line)
    if load:
        print()
        for line in ingest_load.report_load(load):
            print(line)
    for outcome in outcomes:
        if outcome.profile:
            print()
            print("\n".join(outcome.profile))
    print(f"\nmachine: {os.cpu_count()} CPUs; total run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
