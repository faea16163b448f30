"""A worker stopping just as its broker connection is lost stores what that connection had
delivered, as a reconnection would: the broker may not have kept those messages (it persists
only every autosave interval), so dropping them from memory could lose them."""

from __future__ import annotations

import threading
import time
import uuid

from faultproxy import RESET, FaultProxy
from ingest_fixtures import T0, bp, message, pilot, publish_all

from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import MqttConnection

__all__ = ["pilot"]

MESSAGES = 20


def test_a_stop_as_the_connection_is_lost_stores_what_it_had_delivered(pilot) -> None:
    device_id, password = pilot.register()
    name = f"ingest-{uuid.uuid4().hex[:6]}"
    with FaultProxy(pilot.settings.mqtt_port) as proxy:
        settings = pilot.settings.model_copy(update={"mqtt_port": proxy.port})
        # driven step by step rather than on its thread, to stop at that very moment
        worker = IngestWorker(settings, name, IngestConfig())
        try:
            worker._ensure_broker(threading.Event())  # connected and subscribed
            payloads = [
                message(bp(2 * n + 1, T0.replace(hour=8, minute=n))) for n in range(MESSAGES)
            ]
            publish_all(pilot, device_id, password, payloads)
            consumer = worker._mqtt
            assert consumer is not None
            deadline = time.monotonic() + 60  # bounds a failure only
            while worker.held_messages < MESSAGES:
                assert time.monotonic() < deadline, worker.held_messages
                consumer.pump(0.1)
            proxy.set_mode(RESET)  # the connection is lost ...
            while consumer.is_connected:
                assert time.monotonic() < deadline, "the reset went unnoticed"
                consumer.pump(0.1)
            worker._drain()  # ... just as the worker stops
        finally:
            worker._close()
            # the session the lost connection left behind (a shared worker's, kept for what
            # was not acknowledged) is ended, so it takes nothing from the tests after this
            MqttConnection(pilot.admin, name, clean_start=True).connect().close(end_session=True)
    stored = pilot.query("SELECT count(*) FROM readings WHERE device_id = %s", device_id)
    assert stored == [(2 * MESSAGES,)]
