"""bench/ingest.py's reference line: the naive bridge (a separate process: one plain
subscription, one INSERT per reading, a commit per message)."""

from __future__ import annotations

import signal
import sys
import uuid
from collections import Counter
from typing import Any

import psycopg

from ehealthlab.contract.topics import READINGS_WILDCARD, parse_device_topic
from ehealthlab.contract.validation import validate_message
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage

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
