"""Alerts that ingest raises whatever order the readings arrive in: a scale's backlog stored
after a newer weight, and two batches storing one patient's weights at the same time."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import psycopg
from conftest import create_database, drop_database, with_database
from ingest_fixtures import T0, message, pilot, workers

from ehealthlab.contract.topics import readings_topic
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.readings import ReadingWriter

__all__ = ["pilot", "workers"]


def test_a_backlog_lower_weight_raises_the_weight_gain_alert_of_a_later_measurement(pilot, workers):
    """The scale's backlog arrives after a newer weight: the alert is raised all the same, for
    the higher (later-measured) weight, when the lower one arrives."""
    workers()
    device_id, password = pilot.register("weighing_scale")
    with psycopg.connect(pilot.database_url, autocommit=True) as conn:
        provider = conn.execute(
            "INSERT INTO organisations (kind, name) VALUES ('provider', 'ASL TO4') RETURNING id"
        ).fetchone()[0]
        patient = conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, '\\x01', 'P1') RETURNING id",
            (provider,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
            " VALUES (%s, %s, '001003', '2026-03-01')",
            (patient, device_id),
        )

    def weight(seq: int, at: datetime, kg: float) -> bytes:
        item = {
            "seq": seq,
            "metric": "body_weight",
            "value": kg,
            "unit": "kg",
            "at": at.isoformat(),
        }
        return message([item])

    with pilot.device(device_id, password) as device:
        device.publish(readings_topic(device_id), weight(2, T0 + timedelta(days=1), 72.5))
        assert pilot.wait_for("SELECT count(*) FROM readings", [(1,)]) == [(1,)]
        assert pilot.query("SELECT count(*) FROM alerts") == [(0,)]
        device.publish(readings_topic(device_id), weight(1, T0, 70.0))  # the backlog
    raised = pilot.wait_for("SELECT count(*) FROM alerts", [(1,)])
    assert raised == [(1,)]
    [(rule, value, day, raised_at, backlog_received)] = pilot.query(
        "SELECT a.rule, a.value, a.day, a.raised_at, r.received_at FROM alerts a"
        " JOIN readings r ON r.device_id = a.device_id AND r.seq = 1"
    )
    assert (rule, value, day) == ("weight_gain", 72.5, (T0 + timedelta(days=1)).date())
    assert raised_at == backlog_received  # when the platform could first know


def test_two_batches_storing_one_patients_weights_at_once_still_raise_the_gain(
    plain_admin_url, migrated_template
):
    """Two workers (or MQTT and FHIR) each store one of a patient's weights at the same time:
    the second waits for the first's alert evaluation and sees its weight."""
    name = create_database(plain_admin_url, template=migrated_template)
    url = with_database(plain_admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        startup, provider = (
            conn.execute(
                "INSERT INTO organisations (kind, name) VALUES (%s, %s) RETURNING id", (k, k)
            ).fetchone()[0]
            for k in ("startup", "provider")
        )
        # two scales of one patient (at home and at the clinic, say): the batches share no
        # device, so no row of the store or of its rollups makes them wait on each other
        for scale in ("scale-1", "scale-2"):
            conn.execute(
                "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                " VALUES (%s, %s, 'weighing_scale', 'M', %s)",
                (scale, startup, scale),
            )
        patient = conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, '\\x01', 'P1') RETURNING id",
            (provider,),
        ).fetchone()[0]
        for scale in ("scale-1", "scale-2"):
            conn.execute(
                "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
                " VALUES (%s, %s, '001003', '2026-03-01')",
                (patient, scale),
            )
        # the month exists: only the alert evaluation can make the two batches wait
        conn.execute("SELECT ehl_ensure_reading_partitions(ARRAY[%s::timestamptz])", (T0,))

    def weight(scale: str, seq: int, at: datetime, kg: float):
        item = {"seq": seq, "metric": "body_weight", "value": kg, "unit": "kg",
                "at": at.isoformat()}  # fmt: skip
        received = ReceivedMessage(f"ehl/v1/devices/{scale}/readings",
                                   message([item], sent_at=at), 1, False, 0, at, True)  # fmt: skip
        return judge(received, lambda device: KnownDevice("weighing_scale"))

    low = weight("scale-1", 1, T0, 70.0)
    high = weight("scale-2", 1, T0 + timedelta(days=1), 72.5)
    try:
        with psycopg.connect(url) as first, psycopg.connect(url) as second:
            errors: list[BaseException] = []

            def other_worker() -> None:
                try:
                    store_judged(second, ReadingWriter(second), [high], DEFAULT_RULES)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            thread = threading.Thread(target=other_worker)
            with first.transaction():  # the first batch is still open ...
                store_judged(first, ReadingWriter(first), [low], DEFAULT_RULES)
                thread.start()  # ... while the second stores its weight (or waits for it)
                with psycopg.connect(url, autocommit=True) as watcher:
                    waiting, deadline = 0, time.monotonic() + 120  # bounds a failure only
                    while thread.is_alive() and time.monotonic() < deadline:
                        waiting = watcher.execute(
                            "SELECT count(*) FROM pg_locks"
                            " WHERE locktype = 'advisory' AND NOT granted"
                        ).fetchone()[0]
                        if waiting:
                            break
                        time.sleep(0.02)
                    # the window reached, not assumed: the second batch waits on the first
                    assert waiting, "the second batch did not wait for the first's alerts"
            thread.join(30)
            assert not errors, errors
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone() == (2,)
            alerts = conn.execute("SELECT rule, value FROM alerts").fetchall()
        assert alerts == [("weight_gain", 72.5)]
    finally:
        drop_database(plain_admin_url, name)
