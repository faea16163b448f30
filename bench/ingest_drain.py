"""What an ingest worker spends a message, alone: its CPU and its PostgreSQL backend's to drain
single-reading messages queued for it, beside the floor (bench/ingest_floor.py) draining the
same queue in the same run.

Run:  .venv/bin/python bench/ingest_drain.py [--messages N] [--rounds R] [--devices D]

bench/ingest.py measures the whole machine, publishers included, and on two cores its
figures move with everything else the VM does. This takes the worker apart: the broker
holds N messages for the consumer's kept session (published while it was away), then the
consumer alone drains them as it would a backlog, in batches of 1,000. Measured: the CPU
time of the draining thread and of its database backend (from /proc: a backend is a
process of its own), each per message, and the wall time. The floor does only what any
ingest keeping the platform's promises must (bench/ingest_floor.py's own functions: parse,
insert deduplicated and attributed, commit, acknowledge); ingest does everything else too
(validation, claims, the message log, alerts, feedback, last-seen). The two alternate, R
rounds each, every round on a fresh database copied from one template.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import ingest_floor
import paho.mqtt.client as paho
import psycopg
from ingest_messages import encode_message, one, reading_items
from ingest_processes import cpu_seconds
from ingest_scenarios import Options
from ingest_stack import Stack
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ehealthlab.contract.topics import READINGS_WILDCARD, readings_topic
from ehealthlab.gc_tuning import tune_garbage_collector
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import MqttConsumer
from ehealthlab.settings import Settings

SESSION_S = 600


@dataclass
class Drain:
    messages: int
    wall_s: float
    worker_cpu_s: float
    backend_cpu_s: float


def queue_messages(stack: Stack, count: int, tag: str) -> int:
    """Publish `count` single-reading messages (rounded down to a multiple of the devices),
    QoS 1, from every device at once; returns how many."""
    broker = stack.broker
    clients = []
    for device in stack.devices:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device.device_id,
                             protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        client.username_pw_set(device.device_id, device.password)
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.connect(broker.host, broker.port)
        client.loop_start()
        clients.append(client)
    try:
        per_device = count // len(clients)
        sent = []
        for k in range(per_device):
            for device, client in zip(stack.devices, clients, strict=True):
                items = reading_items(k, 1, device.index, stack.base_epoch)
                payload = encode_message(f"{device.device_id}:{tag}:{k}", items)
                sent.append(client.publish(readings_topic(device.device_id), payload, qos=1))
        for info in sent:
            info.wait_for_publish(60)
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
    return per_device * len(clients)


def settings_for(stack: Stack, url: str) -> Settings:
    b = stack.broker
    return Settings(database_url=url, mqtt_host=b.host, mqtt_port=b.port,
                    mqtt_username=b.admin_username, mqtt_password=b.admin_password,
                    state_dir="/nonexistent-ehealthlab-state")  # fmt: skip


def keep_session(stack: Stack, client_id: str) -> None:
    """A kept session subscribed to every device's readings, its client away."""
    consumer = MqttConsumer(stack.admin, client_id, clean_start=True, session_expiry_s=SESSION_S)
    consumer.connect()
    consumer.subscribe(READINGS_WILDCARD, qos=1)
    consumer.close()


def end_session(stack: Stack, client_id: str) -> None:
    consumer = MqttConsumer(stack.admin, client_id, session_expiry_s=SESSION_S)
    consumer.connect()
    consumer.close(end_session=True)


def backend_of(url: str) -> int:
    """The pid of the one other client backend connected to `url`'s database."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.01)
    raise SystemExit("the drain never connected to its database")


def timed(url: str, done: Callable[[], bool], run: Callable[[threading.Event], None]) -> Drain:
    """Run `run(stop)` in a thread until `done()` (asked every 5 ms; nothing is asked of the
    database, which would take the cores being measured); the thread's CPU, its backend's
    and the wall time from start to the last commit."""
    stop = threading.Event()
    cpu: list[float] = []

    def thread() -> None:
        started = time.thread_time()
        run(stop)
        cpu.append(time.thread_time() - started)

    started = time.perf_counter()
    worker = threading.Thread(target=thread, name="drain")
    worker.start()
    try:
        backend = backend_of(url)
        backend_start = cpu_seconds(backend)
        deadline = time.monotonic() + 600
        while not done():
            if time.monotonic() > deadline or not worker.is_alive():
                raise SystemExit("not drained in 600 s")
            time.sleep(0.005)
        wall = time.perf_counter() - started
        backend_used = cpu_seconds(backend) - backend_start
    finally:
        stop.set()
        worker.join()
    return Drain(0, wall, cpu[0], backend_used)


def drain_ingest(stack: Stack, url: str, count: int, tag: str) -> Drain:
    """`ehealthlab ingest`'s worker, partitioned as deployed (one partition), in a thread."""
    config = IngestConfig(subscription="partitioned", session_expiry_s=SESSION_S)
    name = f"drain-{uuid.uuid4().hex[:8]}"
    keep_session(stack, config.client_id(name))
    queued = queue_messages(stack, count, tag)
    worker = IngestWorker(settings_for(stack, url), name, config)
    result = timed(url, lambda: worker.stats.messages >= queued, worker.run)
    end_session(stack, config.client_id(name))
    with psycopg.connect(url) as conn:
        stored = one(conn, "SELECT count(*) FROM device_messages")
    if stored != queued:
        raise SystemExit(f"ingest logged {stored} messages of {queued}")
    return replace(result, messages=queued)


def drain_floor(stack: Stack, url: str, count: int, tag: str) -> Drain:
    """bench/ingest_floor.py's batches, stores and acknowledgements, in a thread."""
    client_id = f"drain-floor-{uuid.uuid4().hex[:8]}"
    keep_session(stack, client_id)
    queued = queue_messages(stack, count, tag)

    stored = [0]

    def run(stop: threading.Event) -> None:
        config = ingest_floor.CONFIG
        with psycopg.connect(url) as conn:
            conn.execute(ingest_floor.STAGING)
            patients: dict[str, Any] = dict(
                conn.execute("SELECT device_id, patient_id FROM enrolments").fetchall()
            )
            conn.commit()
            consumer = MqttConsumer(stack.admin, client_id, session_expiry_s=SESSION_S,
                                    receive_maximum=config.receive_maximum,
                                    max_held=2 * config.receive_maximum)  # fmt: skip
            consumer.connect()
            while not stop.is_set():
                batch = ingest_floor.collect(consumer)
                if batch:
                    ingest_floor.store(conn, batch, patients)
                    for message in batch:  # as ingest_floor.py's main loop
                        consumer.ack(message)
                    consumer.flush()
                    stored[0] += len(batch)
            consumer.close(end_session=True)

    result = timed(url, lambda: stored[0] >= queued, run)
    with psycopg.connect(url) as conn:
        readings = one(conn, "SELECT count(*) FROM readings")
    if readings != queued:
        raise SystemExit(f"the floor stored {readings} readings of {queued}")
    return replace(result, messages=queued)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, default=40_000,
        help="single-reading messages queued for each drain (default 40,000)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="rounds, each the floor's drain then ingest's (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--devices", type=int, default=40,
        help="devices publishing, each its own MQTT client (default 40)",
    )  # fmt: skip
    args = parser.parse_args()
    options = Options(devices=args.devices, publishers=1, duration=0, warmup=0, drain=0,
                      window=0, single_rate=0, single_max_rate=0, batch_rate=0,
                      batch_max_rate=0, latency_rate=0, bare_rate=0, profile_dir=None)  # fmt: skip
    stack = Stack(options)
    drains: dict[str, list[Drain]] = {"ingest": [], "floor": []}
    try:
        stack.start()
        stack.register_pilot()
        tune_garbage_collector()
        for r in range(args.rounds):
            for variant, drain in (("floor", drain_floor), ("ingest", drain_ingest)):
                database = f"drain_{variant}_{r}"
                url = stack.fresh_database(database)
                try:
                    drains[variant].append(drain(stack, url, args.messages, f"{variant}{r}"))
                finally:
                    stack.drop_database(database)
    finally:
        stack.close()
    print(f"{drains['ingest'][0].messages:,} queued single-reading messages from "
          f"{args.devices} devices, drained in batches of up to 1,000; {args.rounds} rounds, "
          "alternated; per message, median of the rounds (all rounds)")  # fmt: skip
    print("| | drain CPU, µs | its backend's CPU, µs | together, µs | messages/s (wall) |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for variant, label in (("floor", "the floor (baseline)"), ("ingest", "ingest's worker")):
        runs = drains[variant]
        worker = [d.worker_cpu_s / d.messages * 1e6 for d in runs]
        backend = [d.backend_cpu_s / d.messages * 1e6 for d in runs]
        both = [w + b for w, b in zip(worker, backend, strict=True)]
        rate = [d.messages / d.wall_s for d in runs]
        medians[variant] = sorted(both)[len(both) // 2]
        print(f"| {label} | {_cell(worker, '.1f')} | {_cell(backend, '.1f')} | "
              f"{_cell(both, '.1f')} | {_cell(rate, ',.0f')} |")  # fmt: skip
    print(f"CPU a message, ingest / the floor: {medians['ingest'] / medians['floor']:.2f}")
    return 0


def _cell(values: list[float], spec: str) -> str:
    middle = sorted(values)[len(values) // 2]
    return f"{middle:{spec}} ({', '.join(f'{v:{spec}}' for v in values)})"


if __name__ == "__main__":
    raise SystemExit(main())
