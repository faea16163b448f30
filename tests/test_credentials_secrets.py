"""No plaintext secret in the database, the logs or the broker's files.

Secrets are made the way users make them — API tokens by `admin bootstrap` and the API,
device passwords by registering and rotating devices — and used: a portal login, a short
pilot whose devices publish through the broker into ingest, a search. Then every row of every
table is read as text, the API's and ingest's logs (every logger at DEBUG, and what they
printed) and every file of the broker's directory (dynamic-security JSON, the persistence
file written on its way down, config, log) and of the platform's state directory are
searched for each secret, as text and, for bytea columns, as hex. A positive control proves
the scan reads what it claims: each token's SHA-256, which the store keeps, is found.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import orjson
import psycopg
from psycopg import sql

from ehealthlab.demo import LocalServices
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.mqtt import BrokerAddress, MqttConnection

WAIT_S = 60.0  # bounds a failure only


def _publish(device: dict, password: str, count: int) -> None:
    mqtt = device["mqtt"]
    address = BrokerAddress(mqtt["host"], mqtt["port"], mqtt["username"], password)
    connection = MqttConnection(address, mqtt["client_id"])
    connection.connect()
    now = datetime.now(UTC).replace(microsecond=0)
    for n in range(count):
        at = (now - timedelta(minutes=n)).isoformat()
        body = {
            "schema": "ehl.readings/1",
            "msg_id": uuid.uuid4().hex,
            "sent_at": now.isoformat(),
            "readings": [
                {"seq": n, "metric": "body_temperature", "value": 36.6, "unit": "Cel", "at": at}
            ],
        }
        connection.publish(mqtt["topics"]["readings"], orjson.dumps(body))
    connection.close()


def _pilot(settings, api_url: str) -> dict[str, str]:
    """Make and use secrets; return them by what they are."""
    secrets: dict[str, str] = {}
    http = httpx2.Client(base_url=api_url, timeout=60)
    try:
        secrets["operator token"] = bootstrap_operator(settings)["token"]
        operator = {"Authorization": f"Bearer {secrets['operator token']}"}
        for kind in ("startup", "provider"):
            made = http.post(
                "/api/v1/organisations",
                headers=operator,
                json={"kind": kind, "name": f"Secrets {kind}"},
            )
            assert made.status_code == 201, made.text
            secrets[f"{kind} token"] = made.json()["token"]
        startup = {"Authorization": f"Bearer {secrets['startup token']}"}
        devices = []
        for serial in ("S-1", "S-2"):
            device = http.post(
                "/api/v1/devices",
                headers=startup,
                json={"type": "thermometer", "model": "T", "serial": serial},
            ).json()
            secrets[f"password of {serial}"] = device["mqtt"]["password"]
            devices.append(device)
        rotated = http.post(
            f"/api/v1/devices/{devices[0]['device_id']}/credentials", headers=startup
        ).json()
        secrets["rotated password of S-1"] = rotated["mqtt"]["password"]
        # the token through the portal's login form
        form = http.get("/portal/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf
        login = http.post(
            "/portal/login", data={"csrf_token": csrf.group(1), "token": secrets["provider token"]}
        )
        assert login.status_code == 303
        # the pilot: both devices publish through the broker into ingest
        _publish(rotated, secrets["rotated password of S-1"], 5)
        _publish(devices[1], secrets["password of S-2"], 5)
        deadline = time.monotonic() + WAIT_S
        for device in devices:
            path = f"/api/v1/devices/{device['device_id']}/messages"
            while len(http.get(path, headers=startup).json()) < 5:
                assert time.monotonic() < deadline, "the pilot's messages were not stored"
                time.sleep(0.1)
        assert http.get("/fhir/Observation", headers=startup).status_code == 200
    finally:
        http.close()
    return secrets


def _database_text(url: str) -> str:
    """Every row of every table outside the system schemas, as text (bytea as hex)."""
    rows: list[str] = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchall()
        assert len(tables) > 20, tables
        for schema, table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(schema, table))
            rows.extend(row[0] for row in conn.execute(query))
    return "\n".join(rows)


def _files_text(directory: Path) -> str:
    """Every file under `directory`, decoded leniently (a secret in a binary file is bytes of
    its ASCII text, so it survives the decoding)."""
    return "\n".join(
        path.read_bytes().decode("latin-1")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    )


def test_no_plaintext_secret_is_kept_anywhere(
    settings, mosquitto_broker, caplog, capfd, record_property
):
    caplog.set_level(logging.DEBUG)
    with LocalServices(settings) as services:
        secrets = _pilot(settings, services.api_url)
    logs = caplog.text + "\n".join(capfd.readouterr())
    database = _database_text(settings.require_database_url())
    mosquitto_broker.stop()  # writes its persistence file on the way out
    try:
        broker_files = _files_text(mosquitto_broker.directory)
        assert (mosquitto_broker.directory / "mosquitto.db").is_file()
    finally:
        mosquitto_broker.start()
    state = _files_text(settings.state_dir)
    places = {
        "database": database,
        "logs": logs,
        "broker's files": broker_files,
        "state directory": state,
    }
    for what, secret in secrets.items():
        for form in (secret, secret.encode().hex()):
            found = [place for place, text in places.items() if form in text]
            assert not found, f"the {what} is kept in plaintext in the {found}"
    for what, secret in secrets.items():  # the positive control: hashes are where they belong
        if what.endswith("token"):
            assert hashlib.sha256(secret.encode()).hexdigest() in database, what
    assert "ehl/v1/devices/" in broker_files  # the devices' roles, in the dynsec file
    assert services.api_url in logs  # what the services printed was captured
    record_property("secrets_scanned", len(secrets))
    print(
        f"secret scan: {len(secrets)} secrets, database {len(database):,} characters, "
        f"logs {len(logs):,}, broker files {len(broker_files):,}"
    )
