"""What the tests of ingest share: readings messages made by hand (`message`, `bp`,
`stream`), a `Pilot` (a store, a broker with the platform role, and devices registered in
both) and ingest workers running on threads (`RunningWorker`).

The `pilot` and `workers` fixtures are imported by the test modules that use them; modules
whose pilot lives elsewhere make their own from `pilot_on` or `Pilot`.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from conftest import create_database, drop_database, with_database

from ehealthlab.contract.topics import feedback_topic, readings_topic
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.settings import Settings

T0 = datetime(2026, 3, 10, 7, 0, tzinfo=UTC)


def message(
    readings: list[dict], *, msg_id: str | None = None, sent_at: datetime | None = None
) -> bytes:
    return orjson.dumps(
        {
            "schema": "ehl.readings/1",
            "msg_id": msg_id or str(uuid.uuid4()),
            "sent_at": (sent_at or datetime.now(UTC)).isoformat(),
            "readings": readings,
        }
    )


def bp(
    seq: int, at: datetime, sys_: float = 130, dia: float = 85, unit: str = "mm[Hg]"
) -> list[dict]:
    stamp = at.isoformat()
    return [
        {"seq": seq, "metric": "bp_systolic", "value": sys_, "unit": unit, "at": stamp},
        {"seq": seq + 1, "metric": "bp_diastolic", "value": dia, "unit": unit, "at": stamp},
    ]


class Pilot:
    """A store, a broker with the platform role, and devices registered in both."""

    def __init__(self, database_url: str, broker) -> None:
        self.database_url = database_url
        self.admin = BrokerAddress(
            broker.host, broker.port, broker.admin_username, broker.admin_password
        )
        self.settings = Settings(
            database_url=database_url,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            mqtt_username=broker.admin_username,
            mqtt_password=broker.admin_password,
            state_dir="/nonexistent-ehealthlab-state",
        )
        with DynamicSecurity(self.admin) as dynsec:
            dynsec.ensure_platform_role(broker.admin_username)
        with psycopg.connect(database_url, autocommit=True) as conn:
            self.startup = conn.execute(
                "INSERT INTO organisations (kind, name) VALUES ('startup', 'Acme') RETURNING id"
            ).fetchone()[0]
        self.devices: list[str] = []

    def register(self, device_type: str = "blood_pressure_monitor") -> tuple[str, str]:
        device_id = f"bpm-{uuid.uuid4().hex[:10]}"
        password = secrets.token_hex(16)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                " VALUES (%s, %s, %s, 'M', %s)",
                (device_id, self.startup, device_type, device_id),
            )
        with DynamicSecurity(self.admin) as dynsec:
            dynsec.create_device_client(device_id, password)
        self.devices.append(device_id)
        return device_id, password

    def device(
        self, device_id: str, password: str, inbox: queue.Queue | None = None
    ) -> MqttConnection:
        connection = MqttConnection(
            self.admin.as_user(device_id, password),
            device_id,
            on_message=inbox.put if inbox is not None else None,
        )
        connection.connect()
        if inbox is not None:
            connection.subscribe(feedback_topic(device_id))
        return connection

    def query(self, sql: str, *params):
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def wait_for(self, sql: str, expected, *params, timeout: float = 60.0):
        """Poll until the query returns `expected`; the timeout only bounds a failure."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.query(sql, *params)
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def cleanup(self) -> None:
        with DynamicSecurity(self.admin) as dynsec:
            for device_id in self.devices:
                dynsec.delete_device_client(device_id)


def pilot_on(admin_url: str, template: str, broker) -> Iterator[Pilot]:
    """A pilot in a copy of the migrated template, on `broker`; removed afterwards (the
    modules of ingest's tests make their `pilot` fixtures from it)."""
    name = create_database(admin_url, template=template)
    p = Pilot(with_database(admin_url, name), broker)
    try:
        yield p
    finally:
        p.cleanup()
        drop_database(admin_url, name)


@pytest.fixture
def pilot(plain_admin_url, migrated_template, mosquitto_broker) -> Iterator[Pilot]:
    yield from pilot_on(plain_admin_url, migrated_template, mosquitto_broker)


class RunningWorker:
    def __init__(self, settings: Settings, name: str, config: IngestConfig | None = None) -> None:
        self.worker = IngestWorker(settings, name, config)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)
        self.thread.start()
        # what is published before any ingest session exists is, by MQTT's rules, for nobody
        assert self.worker.subscribed.wait(15), "the worker did not subscribe"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


@pytest.fixture
def workers(pilot) -> Iterator:
    started: list[RunningWorker] = []

    def start(name: str | None = None, config: IngestConfig | None = None) -> RunningWorker:
        started.append(
            RunningWorker(pilot.settings, name or f"ingest-{uuid.uuid4().hex[:6]}", config)
        )
        return started[-1]

    yield start
    for w in started:
        w.close()


# -- many readings at once ------------------------------------------------------------------


def stream(device_id: str, count: int, per_message: int = 50, start_seq: int = 1) -> list[bytes]:
    """`count` distinct heart-rate readings in messages of `per_message`, one per minute."""
    messages = []
    for first in range(0, count, per_message):
        readings = [
            {
                "seq": start_seq + i,
                "metric": "heart_rate",
                "value": 60 + i % 40,
                "unit": "/min",
                "at": (T0 + timedelta(minutes=start_seq + i)).isoformat(),
            }
            for i in range(first, min(first + per_message, count))
        ]
        messages.append(message(readings, msg_id=f"{device_id}-{first}"))
    return messages


def publish_all(pilot: Pilot, device_id: str, password: str, payloads: list[bytes]) -> None:
    with pilot.device(device_id, password) as device:
        mids = [device.publish_nowait(readings_topic(device_id), p) for p in payloads]
        for mid in mids:
            assert device.wait_for(mid, timeout=30)
