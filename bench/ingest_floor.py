"""The floor of any ingest on this machine: the platform's MQTT client, and the least that an
ingest keeping the platform's promises must do with a reading before it acknowledges it.

That least is: parse the message; insert its readings into `readings`, deduplicated by the
table's key (a redelivery must not count twice) and attributed to the device's patient, with
the roll-up triggers the dashboards read; commit; then acknowledge. Nothing else: no
validation, no message log, no message claims, alerts, feedback or last-seen. What this
process commits beside bare MQTT, in the same run, bounds what ingest can reach here; if the
floor misses a goal, no ingest on this client and schema meets it on this machine.

Run by bench/ingest.py's "floor" scenarios, one process per partition like ingest's workers:
`python bench/ingest_floor.py HOST PORT USER PASSWORD CLIENT_ID DATABASE_URL`. Batches are
filled as ingest's worker fills them: up to 1,000 messages or 10,000 readings, waiting at
most 20 ms counted from the broker's receipt of the batch's first message. It prints
`ready` once subscribed, and stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import orjson
import psycopg

from ehealthlab.contract.topics import READINGS_WILDCARD
from ehealthlab.gc_tuning import tune_garbage_collector
from ehealthlab.ingest.batching import batch_wait_left, fill_batch
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import BrokerAddress, MqttConsumer, ReceivedMessage

CONFIG = IngestConfig()
_COLUMNS = ("device_id", "metric", "at", "value", "measured_at", "received_at", "seq", "msg_id",
            "clock_offset_s", "clock_corrected", "reported_unit", "patient_id")  # fmt: skip
_TYPES = ("text", "text", "timestamptz", "float8", "timestamptz", "timestamptz", "int8", "text",
          "float4", "bool", "text", "uuid")  # fmt: skip
STAGING = (
    "CREATE TEMPORARY TABLE floor_staging (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY floor_staging ({', '.join(_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_INSERT = (
    f"INSERT INTO readings ({', '.join(_COLUMNS)})"  # noqa: S608 - fixed column names
    f" SELECT {', '.join(_COLUMNS)} FROM floor_staging ON CONFLICT DO NOTHING"
)


def collect(consumer: MqttConsumer) -> list[ReceivedMessage]:
    """A batch as ingest's worker collects one (its sizes, its wait, and how it waits)."""
    first = consumer.receive(0.2)
    if first is None:
        return []
    return fill_batch(
        first,
        lambda: consumer.receive(0.0),
        lambda message: message.payload.count(b'"seq"'),
        wait_s=batch_wait_left(first, CONFIG.batch_max_wait_s, datetime.now(UTC)),
        max_messages=CONFIG.batch_max_messages,
        max_readings=CONFIG.batch_max_readings,
    )


def store(conn: psycopg.Connection[Any], batch: list[ReceivedMessage],
          patients: dict[str, Any]) -> None:  # fmt: skip
    """The batch's readings, deduplicated and attributed, in one transaction."""
    parse = datetime.fromisoformat
    with conn.cursor() as cur:
        with cur.copy(_COPY) as copy:
            copy.set_types(list(_TYPES))
            for message in batch:
                device_id = message.topic.split("/")[3]
                patient = patients.get(device_id)
                body = orjson.loads(message.payload)
                msg_id = body["msg_id"]
                for r in body["readings"]:
                    at = parse(r["at"])
                    copy.write_row((device_id, r["metric"], at, r["value"], at,
                                    message.received_at, r["seq"], msg_id, 0.0, False, None,
                                    patient))  # fmt: skip
        cur.execute(_INSERT)
    conn.commit()


def main(argv: list[str]) -> int:
    host, port, user, password, client_id, url = argv
    stop = False

    def terminate(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, terminate)
    with psycopg.connect(url) as conn:
        conn.execute(STAGING)
        rows = conn.execute("SELECT device_id, patient_id FROM enrolments").fetchall()
        patients: dict[str, Any] = dict(rows)
        conn.commit()
        consumer = MqttConsumer(
            BrokerAddress(host, int(port), user, password), client_id, clean_start=True,
            receive_maximum=CONFIG.receive_maximum, max_held=2 * CONFIG.receive_maximum,
        )  # fmt: skip
        consumer.connect()
        consumer.subscribe(READINGS_WILDCARD, qos=1)
        tune_garbage_collector()
        print("ready", flush=True)
        while not stop:
            batch = collect(consumer)
            if not batch:
                continue
            store(conn, batch, patients)
            for message in batch:
                consumer.ack(message)
            consumer.flush()
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
