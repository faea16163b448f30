"""bench/ingest.py's publishers: separate processes, each driving its devices' MQTT 5
connections from one thread with a selector, paced by a token bucket."""

from __future__ import annotations

import contextlib
import selectors
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ingest_messages import encode_message, reading_items

# paho directly for the publishers only (bench/ingest.py's docstring says why)
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ehealthlab.contract.topics import readings_topic

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
