"""`POST /fhir` transaction Bundles against a real PostgreSQL, Mosquitto and ingest worker.

The same readings are sent twice, by two cuffs of one start-up enrolled with two patients of
one provider: over MQTT, through a running ingest worker, and as a FHIR Bundle. What the store
then holds for each — readings, dead letters, message log, alerts — must be the same. Then
duplicates, redeliveries, a conflicting value, a wrong device clock, and bad entries (dead
letters answered one by one, other tenants' and revoked devices).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir_bundles import LOINC, bundle, coding, observation, panel, post, statuses
from gateway_fixtures import cast, enrol, register_patient

from ehealthlab.contract.topics import readings_topic
from ehealthlab.fhir.mapping.ids import observation_id
from ehealthlab.fhir.transaction.response import REJECTION_REASON_SYSTEM
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.settings import Settings

__all__ = ["cast"]

DEADLINE_S = 30.0


# -- the application, a running ingest worker, and devices --------------------------------


@pytest.fixture(scope="module")
def ingest(client, settings) -> Iterator[IngestWorker]:
    """An ingest worker consuming the broker, as `ehealthlab ingest` runs one."""
    worker = IngestWorker(settings, f"ingest-{uuid.uuid4().hex[:6]}", IngestConfig())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    assert worker.subscribed.wait(60)  # bounds a failure only
    yield worker
    stop.set()
    thread.join(30)


def new_device(client, cast, who: str = "a", device_type: str = "blood_pressure_monitor") -> dict:
    body = {"type": device_type, "model": "BP-1", "serial": uuid.uuid4().hex[:10]}
    answer = client.post("/api/v1/devices", json=body, headers=cast.h(who))
    assert answer.status_code == 201, answer.text
    return answer.json()


def enrolled_cuff(client, cast) -> str:
    """A cuff of start-up a, enrolled with a new patient of provider p."""
    device_id = new_device(client, cast)["device_id"]
    patient = register_patient(client, cast, "p")
    made = enrol(client, cast, patient, device_id, start="2026-01-01")
    assert made.status_code == 201, made.text
    return device_id


def query(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.require_database_url()) as conn:
        return conn.execute(sql, params).fetchall()


def issues(answer, index: int) -> list[dict]:
    return answer.json()["entry"][index]["response"].get("outcome", {}).get("issue", [])


# -- the same readings, over MQTT and as FHIR --------------------------------------------------


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def test_a_bundle_is_stored_exactly_as_the_same_readings_over_mqtt(
    client, cast, ingest, mosquitto_broker, settings
):
    by_mqtt = new_device(client, cast)
    patient = register_patient(client, cast, "p")
    assert enrol(client, cast, patient, by_mqtt["device_id"], start="2026-01-01").status_code == 201
    by_http = enrolled_cuff(client, cast)
    now = datetime.now(UTC).replace(microsecond=0)
    t = [stamp(now - timedelta(hours=h)) for h in (5, 4, 3, 2, 1)]
    future = stamp(now + timedelta(days=1))
    readings = [
        {"seq": 1, "metric": "bp_systolic", "value": 130, "unit": "mm[Hg]", "at": t[0]},
        {"seq": 2, "metric": "bp_diastolic", "value": 85, "unit": "mm[Hg]", "at": t[0]},
        {"seq": 3, "metric": "heart_rate", "value": 72, "unit": "/min", "at": t[0]},
        {"seq": 4, "metric": "bp_systolic", "value": 17.3, "unit": "kPa", "at": t[1]},
        {"seq": 5, "metric": "bp_diastolic", "value": 11.2, "unit": "kPa", "at": t[1]},
        {"seq": 6, "metric": "bp_systolic", "value": 191, "unit": "mm[Hg]", "at": t[2]},  # alert
        {"seq": 7, "metric": "bp_diastolic", "value": 121, "unit": "mm[Hg]", "at": t[2]},
        {"seq": 8, "metric": "heart_rate", "value": 900, "unit": "/min", "at": t[3]},
        {"seq": 9, "metric": "spo2", "value": 97, "unit": "%", "at": t[3]},
        {"seq": 10, "metric": "heart_rate", "value": 70, "unit": "bpm", "at": t[4]},
        {"seq": 11, "metric": "heart_rate", "value": 70, "unit": "/min", "at": future},
    ]
    message = {
        "schema": "ehl.readings/1",
        "msg_id": str(uuid.uuid4()),
        "sent_at": stamp(datetime.now(UTC)),
        "readings": readings,
    }
    mqtt = by_mqtt["mqtt"]
    address = BrokerAddress(
        mosquitto_broker.host, mosquitto_broker.port, mqtt["username"], mqtt["password"]
    )
    device = MqttConnection(address, mqtt["client_id"]).connect()
    try:
        device.publish(readings_topic(by_mqtt["device_id"]), orjson.dumps(message), qos=1)
    finally:
        device.close()

    d = by_http
    answer = post(
        client,
        cast.h("a"),
        bundle(
            panel(d, 1, t[0], 130, 85),
            observation(d, 3, t[0], metric="heart_rate", value=72, unit="/min"),
            panel(d, 4, t[1], 17.3, 11.2, unit="kPa"),
            panel(d, 6, t[2], 191, 121),
            observation(d, 8, t[3], metric="heart_rate", value=900, unit="/min"),
            observation(d, 9, t[3], metric="spo2", value=97, unit="%"),
            observation(d, 10, t[4], metric="heart_rate", value=70, unit="bpm"),
            observation(d, 11, future, metric="heart_rate", value=70, unit="/min"),
            timestamp=stamp(datetime.now(UTC)),
        ),
    )
    assert statuses(answer) == ["201 Created"] * 4 + ["422 Unprocessable Entity"] * 4
    first = answer.json()["entry"][0]["response"]
    at0 = datetime.fromisoformat(t[0])
    assert first["location"] == f"Observation/{observation_id(d, 'blood_pressure', at0)}"
    reasons = [issues(answer, i)[0]["details"]["coding"][0] for i in range(4, 8)]
    assert [r["code"] for r in reasons] == [
        "out_of_range",
        "metric_not_for_device_type",
        "unit_mismatch",
        "timestamp_in_future",
    ]
    assert {r["system"] for r in reasons} == {REJECTION_REASON_SYSTEM}

    def stored(device_id: str) -> dict[str, Any]:
        return {
            "readings": query(
                settings,
                "SELECT metric, at, value, measured_at, seq, clock_corrected, reported_unit,"
                " patient_id IS NOT NULL FROM readings WHERE device_id = %s"
                " ORDER BY metric, at",
                device_id,
            ),
            "rejected": query(
                settings,
                "SELECT reason, seq, metric, at, measured_at FROM rejected_readings"
                " WHERE device_id = %s ORDER BY seq",
                device_id,
            ),
            "log": query(
                settings,
                "SELECT qos, readings, accepted, duplicates, rejected, deliveries"
                " FROM device_messages WHERE device_id = %s",
                device_id,
            ),
            "alerts": query(
                settings,
                "SELECT rule, day, metric, at, value FROM alerts WHERE device_id = %s"
                " ORDER BY rule",
                device_id,
            ),
            "seen": query(
                settings,
                "SELECT last_seen_at IS NOT NULL FROM devices WHERE device_id = %s",
                device_id,
            ),
        }

    def ingested(now: dict[str, Any]) -> bool:
        # the message's log row commits with its readings; the device's last-seen time
        # follows in a transaction of its own, after that commit
        return bool(now["log"]) and now["seen"] == [(True,)]

    deadline = time.monotonic() + DEADLINE_S
    while not ingested(stored(by_mqtt["device_id"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    # read again once it is all in: each query above is its own snapshot, so the readings
    # may have been read just before the commit that the message's log row was read after
    over_mqtt = stored(by_mqtt["device_id"])
    over_http = stored(by_http)
    assert over_http == over_mqtt
    assert len(over_http["readings"]) == 7 and all(row[7] for row in over_http["readings"])
    assert [row[0] for row in over_http["rejected"]] == [
        "out_of_range",
        "metric_not_for_device_type",
        "unit_mismatch",
        "timestamp_in_future",
    ]
    assert over_http["log"] == [(1, 11, 7, 0, 4, 1)]
    assert [row[0] for row in over_http["alerts"]] == ["bp_diastolic_high", "bp_systolic_high"]
    # a dead letter keeps the Observation as the start-up sent it, and the entry's index
    kept = query(
        settings,
        "SELECT item_index, payload FROM rejected_readings WHERE device_id = %s AND seq = 9",
        by_http,
    )
    assert kept[0][0] == 5 and orjson.loads(kept[0][1])["code"] == coding("spo2")
    rejects = client.get(f"/api/v1/devices/{by_http}/rejects", headers=cast.h("a")).json()
    assert {r["reason"] for r in rejects} == {r[0] for r in over_http["rejected"]}


def test_a_bundle_sent_again_collapses_into_duplicates(client, cast, settings):
    d = enrolled_cuff(client, cast)
    at = stamp(datetime.now(UTC) - timedelta(hours=1))
    body = bundle(
        panel(d, 20, at, 128, 82),
        observation(d, 22, at, metric="heart_rate", value=64, unit="/min"),
    )
    assert statuses(post(client, cast.h("a"), body)) == ["201 Created"] * 2
    again = post(client, cast.h("a"), body)
    assert statuses(again) == ["200 OK"] * 2
    assert {i["code"] for i in issues(again, 0)} == {"duplicate"}
    assert again.json()["entry"][0]["response"]["location"].startswith(f"Observation/{d}.")
    assert query(settings, "SELECT count(*) FROM readings WHERE device_id = %s", d) == [(3,)]
    assert query(settings, "SELECT count(*) FROM duplicate_readings WHERE device_id = %s", d) == [
        (3,)
    ]
    assert query(
        settings,
        "SELECT accepted, duplicates FROM device_messages"
        " WHERE device_id = %s ORDER BY received_at",
        d,
    ) == [(3, 0), (0, 3)]


def test_a_bundle_delivered_again_with_its_identifier_is_logged_once(client, cast, settings):
    d = enrolled_cuff(client, cast)
    at = stamp(datetime.now(UTC) - timedelta(hours=1))
    body = bundle(
        observation(d, 30, at, metric="heart_rate", value=61, unit="/min"),
        identifier={"value": f"delivery-{uuid.uuid4().hex[:8]}"},
        timestamp=stamp(datetime.now(UTC)),
    )
    assert statuses(post(client, cast.h("a"), body)) == ["201 Created"]
    again = post(client, cast.h("a"), body)
    assert statuses(again) == ["200 OK"]
    assert "delivered before" in issues(again, 0)[0]["diagnostics"]
    assert query(
        settings,
        "SELECT msg_id, deliveries, accepted FROM device_messages WHERE device_id = %s",
        d,
    ) == [(body["identifier"]["value"], 2, 1)]
    assert query(settings, "SELECT count(*) FROM duplicate_readings WHERE device_id = %s", d) == [
        (0,)
    ]


def test_a_conflicting_value_is_refused_and_the_first_one_stays(client, cast, settings):
    d = enrolled_cuff(client, cast)
    at = stamp(datetime.now(UTC) - timedelta(hours=1))
    first = observation(d, 40, at, metric="heart_rate", value=60, unit="/min")
    assert statuses(post(client, cast.h("a"), bundle(first))) == ["201 Created"]
    other = observation(d, 41, at, metric="heart_rate", value=99, unit="/min")
    answer = post(client, cast.h("a"), bundle(other))
    assert statuses(answer) == ["409 Conflict"]
    assert issues(answer, 0)[0]["details"]["coding"][0]["code"] == "conflicting_duplicate"
    assert query(settings, "SELECT value FROM readings WHERE device_id = %s", d) == [(60.0,)]
    assert query(
        settings, "SELECT reason, item_index FROM rejected_readings WHERE device_id = %s", d
    ) == [("conflicting_duplicate", 0)]


def test_a_wrong_device_clock_is_corrected_as_over_mqtt(client, cast, settings):
    d = enrolled_cuff(client, cast)
    sent = datetime.now(UTC) - timedelta(hours=2)  # the device's clock is two hours behind
    at = sent - timedelta(minutes=1)
    body = bundle(
        observation(d, 50, stamp(at), metric="heart_rate", value=66, unit="/min"),
        timestamp=stamp(sent),
    )
    assert statuses(post(client, cast.h("a"), body)) == ["201 Created"]
    [(corrected, offset, shift)] = query(
        settings,
        "SELECT clock_corrected, clock_offset_s,"
        " extract(epoch FROM measured_at - at) FROM readings WHERE device_id = %s",
        d,
    )
    assert corrected and 7190 < offset < 7300 and 7190 < float(shift) < 7300


# -- bad entries: dead letters with reasons, answered per entry -------------------------------


def test_bad_entries_are_dead_letters_answered_one_by_one(client, cast, settings):
    d = new_device(client, cast)["device_id"]  # unassigned: nobody is enrolled with it
    foreign = new_device(client, cast, "b")["device_id"]
    revoked = new_device(client, cast)["device_id"]
    assert client.delete(f"/api/v1/devices/{revoked}", headers=cast.h("a")).status_code == 204
    at = stamp(datetime.now(UTC) - timedelta(hours=1))
    good = observation(d, 60, at, metric="heart_rate", value=70, unit="/min")
    no_seq = observation(d, 61, at, metric="heart_rate", value=71, unit="/min", identifier=[])
    unknown = observation(
        d,
        62,
        at,
        metric="heart_rate",
        value=72,
        unit="/min",
        code={"coding": [{"system": LOINC, "code": "1234-5"}]},
    )
    amended = observation(d, 63, at, metric="heart_rate", value=73, unit="/min", status="amended")
    no_value = observation(d, 64, at, metric="heart_rate", value=1, unit="/min")
    del no_value["valueQuantity"]
    no_unit = observation(d, 65, at, metric="heart_rate", value=74, unit="/min")
    del no_unit["valueQuantity"]["code"]
    invalid = observation(d, 66, "2026-13-45T99:00:00Z", metric="heart_rate", value=75, unit="/min")
    half_panel = panel(d, 67, at, 500, 80)  # systolic out of range, diastolic fine
    body = bundle(
        good,
        no_seq,
        unknown,
        amended,
        no_value,
        no_unit,
        invalid,
        half_panel,
        observation(foreign, 1, at, metric="heart_rate", value=70, unit="/min"),
        observation(revoked, 1, at, metric="heart_rate", value=70, unit="/min"),
        {"resourceType": "Patient"},
        kind="batch",
    )
    body["entry"].append({"resource": good, "request": {"method": "PUT", "url": "Observation/x"}})
    body["entry"].append("not an entry")
    answer = post(client, cast.h("a"), body)
    assert answer.json()["type"] == "batch-response"
    assert statuses(answer) == [
        "201 Created",
        *["422 Unprocessable Entity"] * 7,
        "404 Not Found",
        "404 Not Found",
        "400 Bad Request",
        "405 Method Not Allowed",
        "400 Bad Request",
    ]
    reasons = {i: issues(answer, i)[0]["details"]["coding"][0]["code"] for i in range(1, 8)}
    assert reasons == {
        1: "schema_violation",
        2: "unknown_metric",
        3: "schema_violation",
        4: "schema_violation",
        5: "unit_mismatch",
        6: "schema_violation",
        7: "out_of_range",
    }
    assert "reading-seq" in issues(answer, 1)[0]["diagnostics"]
    assert issues(answer, 7)[0]["expression"] == ["Bundle.entry[7].resource.component[0]"]
    assert issues(answer, 7)[1]["severity"] == "information"  # the diastolic is stored
    assert "location" in answer.json()["entry"][7]["response"]
    for i in range(8, 13):
        OperationOutcome.model_validate(answer.json()["entry"][i]["response"]["outcome"])
    dead = query(
        settings,
        "SELECT item_index, reason, seq FROM rejected_readings"
        " WHERE device_id = %s ORDER BY item_index",
        d,
    )
    assert dead == [
        (1, "schema_violation", None),
        (2, "unknown_metric", 62),
        (3, "schema_violation", 63),
        (4, "schema_violation", 64),
        (5, "unit_mismatch", 65),
        (6, "schema_violation", 66),
        (7, "out_of_range", 67),
    ]
    assert query(
        settings,
        "SELECT metric, seq, patient_id FROM readings WHERE device_id = %s ORDER BY seq",
        d,
    ) == [("heart_rate", 60, None), ("bp_diastolic", 68, None)]
    assert query(
        settings,
        "SELECT readings, accepted, rejected FROM device_messages WHERE device_id = %s",
        d,
    ) == [(9, 2, 7)]
    # nothing at all for another start-up's device, nor for a revoked one
    for other in (foreign, revoked):
        counts = query(
            settings,
            "SELECT (SELECT count(*) FROM readings WHERE device_id = %s),"
            " (SELECT count(*) FROM rejected_readings WHERE device_id = %s),"
            " (SELECT count(*) FROM device_messages WHERE device_id = %s)",
            other,
            other,
            other,
        )
        assert counts == [(0, 0, 0)]


def test_a_bundle_whose_every_reading_is_refused_is_still_logged(client, cast, settings):
    d = new_device(client, cast)["device_id"]
    at = stamp(datetime.now(UTC) - timedelta(hours=1))
    body = bundle(
        observation(d, 70, at, metric="heart_rate", value=70, unit="/min", status="preliminary")
    )
    assert statuses(post(client, cast.h("a"), body)) == ["422 Unprocessable Entity"]
    assert query(
        settings,
        "SELECT readings, accepted, rejected FROM device_messages WHERE device_id = %s",
        d,
    ) == [(1, 0, 1)]
