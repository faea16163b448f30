"""The platform's MQTT consumer alone: CPU a message to take queued messages and acknowledge
them, with its own PUBLISH decoder (`publish_decoder`, which also takes whole packets from
the socket's buffer without paho's reader: `read_buffered`) and, in the same run, with
paho's reader and decoder.

Run:  .venv/bin/python bench/mqtt_consumer.py [--messages N] [--rounds R]

A private Mosquitto (the stack's configuration and receive-stamp plugin) on a free loopback
port; one device publishes N single-reading messages into a kept session of the consumer
while it is away; the consumer then connects and drains them as ingest's workers do
(receive maximum 2,000, acknowledgements in batches of 1,000 after "storing" nothing).
Measured: the CPU time of the consumer's thread over the drain (the broker is another
process, so its work is not counted), per message; and the wall time. The two decoders
alternate, R rounds each, and the best round of each is reported.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from ehealthlab.contract.topics import readings_topic
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, MqttConnection, MqttConsumer
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.programs import ServiceAccount, place_for

RECEIVE_MAXIMUM = 2000  # as ingest's workers
BATCH = 1000


def reading(n: int) -> bytes:
    """A single-reading message of the contract's shape (about 230 bytes)."""
    return orjson.dumps({
        "msg_id": f"{uuid.uuid4()}",
        "schema": "ehl.reading/1",
        "readings": [{
            "metric": "blood_pressure", "device_time": f"2026-12-06T10:{n % 60:02d}:00Z",
            "values": {"systolic": 120 + n % 30, "diastolic": 80 + n % 10, "pulse": 70},
        }],
    })  # fmt: skip


def fill(device: BrokerAddress, topic: str, count: int) -> None:
    with MqttConnection(device, device.username or "", max_inflight=200) as publisher:
        for n in range(count):
            publisher.publish_nowait(topic, reading(n), qos=1)
        publisher.publish(topic, b"last", qos=1)  # the broker has all before it, in order


def drain(
    admin: BrokerAddress, name: str, count: int, *, paho_decoder: bool
) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) to take and acknowledge `count` + 1."""
    consumer = MqttConsumer(
        admin, name, session_expiry_s=600, receive_maximum=RECEIVE_MAXIMUM,
        max_held=2 * RECEIVE_MAXIMUM,
    )  # fmt: skip
    if paho_decoder:
        consumer._client.on_decoded_publish = None  # the baseline: paho's reader and decoder
    cpu, wall = time.thread_time(), time.perf_counter()
    consumer.connect()
    taken = 0
    while taken <= count:
        batch = []
        message = consumer.receive(5.0)
        if message is None:
            raise SystemExit(f"only {taken} of {count + 1} came")
        while message is not None:
            batch.append(message)
            if len(batch) >= BATCH:
                break
            message = consumer.receive(0.0)
        for message in batch:
            consumer.ack(message)
        consumer.flush()
        taken += len(batch)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    if not all(m.broker_stamped for m in batch):
        raise SystemExit("the broker did not stamp the messages: not the stack's broker")
    consumer.close(end_session=True)
    return cpu, wall


def one_round(admin: BrokerAddress, device: BrokerAddress, count: int, *, paho_decoder: bool
              ) -> tuple[float, float]:  # fmt: skip
    name = f"bench-consumer-{uuid.uuid4().hex[:8]}"
    consumer = MqttConsumer(admin, name, clean_start=True, session_expiry_s=600)
    consumer.connect()
    consumer.subscribe(readings_topic(device.username or ""), qos=1)
    consumer.close()  # away: the broker keeps what comes for the session
    fill(device, readings_topic(device.username or ""), count)
    return drain(admin, name, count, paho_decoder=paho_decoder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ehl-bench-consumer-"))
    broker = MosquittoBroker(place_for(ServiceAccount.for_server("mosquitto"), scratch / "mq"))
    try:
        start_on_free_port(broker)
        admin = BrokerAddress(broker.host, broker.port, broker.admin_username,
                              broker.admin_password)  # fmt: skip
        device_id, password = "bench-bpm-0001", secrets.token_hex(12)
        with DynamicSecurity(admin) as dynsec:
            dynsec.ensure_platform_role(broker.admin_username)
            dynsec.create_device_client(device_id, password)
        device = admin.as_user(device_id, password)
        results: dict[str, list[tuple[float, float]]] = {"paho": [], "ours": []}
        for _ in range(options.rounds):
            for variant in ("paho", "ours"):
                results[variant].append(one_round(
                    admin, device, options.messages, paho_decoder=variant == "paho"))  # fmt: skip
        print(
            f"{options.messages:,} queued single-reading messages (with the broker's receive "
            f"stamp), drained and acknowledged; best of {options.rounds} rounds, alternated"
        )
        print("| decoder | µs CPU / message | messages/s (wall) | all rounds, µs CPU / message |")
        print("|---|---:|---:|---|")
        best = {}
        for variant, label in (("paho", "paho's (baseline)"), ("ours", "publish_decoder")):
            per = [cpu / (options.messages + 1) * 1e6 for cpu, _ in results[variant]]
            rate = max((options.messages + 1) / wall for _, wall in results[variant])
            best[variant] = min(per)
            print(
                f"| {label} | {min(per):.1f} | {rate:,.0f} | "
                + ", ".join(f"{p:.1f}" for p in per)
                + " |"
            )
        print(f"CPU a message, publish_decoder / paho's: {best['ours'] / best['paho']:.2f}")
    finally:
        broker.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
