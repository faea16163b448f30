"""bench/ingest.py's own servers (PostgreSQL with fsync on, Mosquitto) and the pilot
registered in both: dynsec clients for the devices, a template database."""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from ingest_messages import DEVICE_TYPE, TEMPLATE, one
from ingest_scenarios import Options
from psycopg import sql

from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import start_on_free_port
from ehealthlab.stack.postgres import PostgresServer
from ehealthlab.stack.programs import ServiceAccount, place_for
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

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

    def restart_broker(self, *, journal: bool) -> None:
        """The same broker (port, clients, sessions) stopped and started with or without its
        journal plugin."""
        self.broker.stop()
        self.broker.journal = journal
        self.broker.start()

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
