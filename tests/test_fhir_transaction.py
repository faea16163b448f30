"""`POST /fhir` transaction Bundles against a real PostgreSQL, Mosquitto and ingest worker.

The same readings are sent twice, by two cuffs of one start-up enrolled with two patients of
one provider: over MQTT, through a running ingest worker, and as a FHIR Bundle. What the store
then holds for each — readings, dead letters, message log, alerts — must be the same. Then
duplicates, redeliveries, bad entries, other tenants' devices and malformed Bundles.
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
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from test_gateway_api import Cast, bearer, enrol, register_patient, run_admin

from ehealthlab.contract.messages import MAX_READINGS, ReasonCode
from ehealthlab.contract.topics import readings_topic
from ehealthlab.contract.validation import validate_message
from ehealthlab.fhir.mapping.ids import observation_id
from ehealthlab.fhir.transaction.bundle import MAX_ENTRIES, BundleError, read_bundle
from ehealthlab.fhir.transaction.entry import READING_SEQ_SYSTEM
from ehealthlab.fhir.transaction.messages import contract_messages, message_id_base
from ehealthlab.fhir.transaction.response import REJECTION_REASON_SYSTEM
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.settings import Settings

LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
CODES = {  # metric -> (system, code) as a device would send it
    "bp_systolic": (LOINC, "8480-6"),
    "bp_diastolic": (LOINC, "8462-4"),
    "heart_rate": (MDC, "149546"),
    "spo2": (LOINC, "59408-5"),
    "body_weight": (LOINC, "29463-7"),
}
FHIR = {"Content-Type": "application/fhir+json"}
DEADLINE_S = 30.0


# -- the application, a running ingest worker, and the cast ----------------------------------


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


@pytest.fixture(scope="module")
def cast(client, settings) -> Cast:
    boot = run_admin(settings, "admin", "bootstrap")
    cast = Cast(operator=boot["token"])
    for who, kind in (("a", "startup"), ("b", "startup"), ("p", "provider")):
        answer = client.post(
            "/api/v1/organisations",
            json={"kind": kind, "name": f"{kind} {who} {uuid.uuid4().hex[:6]}"},
            headers=bearer(cast.operator),
        )
        assert answer.status_code == 201, answer.text
        cast.tokens[who] = answer.json()["token"]
        cast.organisations[who] = answer.json()["id"]
    return cast


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


# -- building Bundles ---------------------------------------------------------------------------


def quantity(value: Any, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def coding(metric: str) -> dict:
    system, code = CODES[metric]
    return {"coding": [{"system": system, "code": code}]}


def observation(
    device_id: str,
    seq: int,
    at: str,
    *,
    metric: str | None = None,
    value: Any = None,
    unit: str = "",
    components: list | None = None,
    **extra: Any,
) -> dict:
    """A vital-signs Observation as a FHIR-speaking device would send it."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": READING_SEQ_SYSTEM, "value": str(seq)}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}
        if components
        else coding(metric),
        "effectiveDateTime": at,
        "device": {"reference": f"Device/{device_id}"},
    }
    if components:
        resource["component"] = components
    else:
        resource["valueQuantity"] = quantity(value, unit)
    resource.update(extra)
    return resource


def panel(
    device_id: str,
    seq: int,
    at: str,
    systolic: Any,
    diastolic: Any,
    *,
    unit: str = "mm[Hg]",
    **extra: Any,
) -> dict:
    components = [
        {"code": coding("bp_systolic"), "valueQuantity": quantity(systolic, unit)},
        {"code": coding("bp_diastolic"), "valueQuantity": quantity(diastolic, unit)},
    ]
    return observation(device_id, seq, at, components=components, **extra)


def bundle(*resources: dict, kind: str = "transaction", **extra: Any) -> dict:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": "Observation"}} for r in resources
        ],
        **extra,
    }


def post(client, headers: dict[str, str], body: dict | bytes) -> Any:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/fhir", content=content, headers={**headers, **FHIR})


def statuses(answer) -> list[str]:
    assert answer.status_code == 200, answer.text
    Bundle.model_validate(answer.json())  # the response is valid FHIR
    return [entry["response"]["status"] for entry in answer.json()["entry"]]


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


# -- who may post --------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("p", 403), ("operator", 403), ("nobody", 401)])
def test_only_start_ups_deliver_bundles(client, cast, who, status):
    headers = {} if who == "nobody" else cast.h(who)
    answer = post(client, headers, bundle())
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("application/fhir+json")
    OperationOutcome.model_validate(answer.json())


def test_an_empty_bundle_is_an_empty_response(client, cast):
    assert statuses(post(client, cast.h("a"), bundle())) == []


# -- malformed Bundles: 400 with an OperationOutcome, never 500 --------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "structure"),
        (b"{", 400, "structure"),
        (b"\xff\xfe", 400, "structure"),
        (b"[]", 400, "structure"),
        (b'{"resourceType": "Observation"}', 400, "structure"),
        (b'{"resourceType": "Bundle", "type": "searchset"}', 400, "not-supported"),
        (b'{"resourceType": "Bundle", "type": "transaction", "entry": {}}', 400, "structure"),
        (b'{"resourceType": "Bundle", "type": "batch", "timestamp": "yesterday"}', 400, "value"),
        (
            b'{"resourceType": "Bundle", "type": "batch", "identifier": {"value": 1}}',
            400,
            "structure",
        ),
        (orjson.dumps(bundle(*[{}] * (MAX_ENTRIES + 1))), 413, "too-costly"),
        (
            b'{"resourceType": "Bundle", "type": "batch", "x": "' + b"a" * (5 << 20) + b'"}',
            413,
            "too-costly",
        ),
    ],
)
def test_malformed_bundles_are_refused_whole(client, cast, body, status, code):
    answer = post(client, cast.h("a"), body)
    assert answer.status_code == status, answer.text
    assert OperationOutcome.model_validate(answer.json()).issue[0].code == code


def test_a_bundle_in_another_media_type_is_415(client, cast):
    answer = client.post(
        "/fhir",
        content=b"<Bundle/>",
        headers={**cast.h("a"), "Content-Type": "application/fhir+xml"},
    )
    assert answer.status_code == 415
    OperationOutcome.model_validate(answer.json())


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = (
    "resourceType",
    "identifier",
    "status",
    "code",
    "effectiveDateTime",
    "device",
    "valueQuantity",
    "component",
    "subject",
)


@st.composite
def mangled_bundles(draw) -> bytes:
    """Bundles whose parts are replaced, at random, by arbitrary JSON."""
    d = draw(st.sampled_from(["bpm-0000000000000001", "bpm-x"]))
    resource = observation(
        d,
        draw(st.integers(0, 10**6)),
        "2026-03-01T08:00:00Z",
        metric="heart_rate",
        value=70,
        unit="/min",
    )
    for name in draw(st.sets(st.sampled_from(FIELDS), max_size=3)):
        resource[name] = draw(JSON)
    entry: Any = {"resource": resource, "request": {"method": "POST", "url": "Observation"}}
    if draw(st.booleans()):
        entry = draw(st.sampled_from([entry, {"resource": entry["resource"]}, draw(JSON)]))
    document: Any = bundle(kind=draw(st.sampled_from(["transaction", "batch", "collection"])))
    document["entry"] = [entry]
    if draw(st.booleans()):
        document[draw(st.sampled_from(["type", "entry", "timestamp", "identifier"]))] = draw(JSON)
    if draw(st.integers(0, 9)) == 0:
        document = draw(JSON)
    return orjson.dumps(document)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=mangled_bundles())
def test_no_bundle_makes_the_server_fail(client, cast, body):
    answer = post(client, cast.h("b"), body)
    assert answer.status_code in (200, 400, 413), answer.text
    document = answer.json()
    if answer.status_code == 200:
        Bundle.model_validate(document)
    else:
        OperationOutcome.model_validate(document)


# -- the pure mapping ----------------------------------------------------------------------------

D = "bpm-0000000000000001"
AT = "2026-03-01T08:00:00+01:00"


@pytest.mark.parametrize(
    ("resource", "items"),
    [
        (
            observation(D, 5, AT, metric="heart_rate", value=72, unit="/min"),
            [{"seq": 5, "metric": "heart_rate", "value": 72, "unit": "/min", "at": AT}],
        ),
        (
            observation(D, 5, AT, metric="body_weight", value=80.25, unit="[lb_av]"),
            [{"seq": 5, "metric": "body_weight", "value": 80.25, "unit": "[lb_av]", "at": AT}],
        ),
        (
            observation(
                D,
                7,
                AT,
                metric="spo2",
                value=97,
                unit="%",
                code={
                    "coding": [
                        {"system": MDC, "code": "150456"},
                        {"system": LOINC, "code": "2708-6"},
                    ]
                },
            ),
            [{"seq": 7, "metric": "spo2", "value": 97, "unit": "%", "at": AT}],
        ),
        (
            panel(D, 9, AT, 120, 80),
            [
                {"seq": 9, "metric": "bp_systolic", "value": 120, "unit": "mm[Hg]", "at": AT},
                {"seq": 10, "metric": "bp_diastolic", "value": 80, "unit": "mm[Hg]", "at": AT},
            ],
        ),
        (
            panel(D, 9, AT, 120, 80, code={"coding": [{"system": MDC, "code": "150020"}]}),
            [
                {"seq": 9, "metric": "bp_systolic", "value": 120, "unit": "mm[Hg]", "at": AT},
                {"seq": 10, "metric": "bp_diastolic", "value": 80, "unit": "mm[Hg]", "at": AT},
            ],
        ),
        (
            {
                **observation(
                    D, 5, AT, metric="heart_rate", value=72, unit="/min", effectiveInstant=AT
                ),
                "effectiveDateTime": None,
            },
            [{"seq": 5, "metric": "heart_rate", "value": 72, "unit": "/min", "at": AT}],
        ),
    ],
)
def test_observations_become_contract_readings(resource, items):
    resource = {k: v for k, v in resource.items() if v is not None}
    plan = read_bundle(orjson.dumps(bundle(resource)))
    [entry] = plan.entries
    assert entry.refusal is None and entry.faults == ()
    assert [draft.item for draft in entry.drafts] == items


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": "-1"}]}, "schema_violation"),
        # more digits than int() takes: refused, not a crash
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": "9" * 5000}]}, "schema_violation"),
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": str(2**63)}]}, "schema_violation"),
        (
            {
                "identifier": [
                    {"system": READING_SEQ_SYSTEM, "value": "1"},
                    {"system": READING_SEQ_SYSTEM, "value": "2"},
                ]
            },
            "schema_violation",
        ),
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": str(2**63)}]}, "schema_violation"),
        (
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8867-4"},
                        {"system": LOINC, "code": "2708-6"},
                    ]
                }
            },
            "schema_violation",
        ),
        ({"code": {"text": "pulse"}}, "unknown_metric"),
        (
            {"valueQuantity": {"value": 72, "code": "/min", "system": "http://example.org"}},
            "unit_mismatch",
        ),
        (
            {"effectiveDateTime": None, "effectivePeriod": {"start": "2026-03-01T08:00:00Z"}},
            "schema_violation",
        ),
        ({"valueQuantity": None, "valueString": "72"}, "schema_violation"),
    ],
)
def test_what_cannot_be_a_reading_is_a_fault_with_a_reason(change, reason):
    resource = observation(D, 5, AT, metric="heart_rate", value=72, unit="/min") | change
    resource = {k: v for k, v in resource.items() if v is not None}
    [entry] = read_bundle(orjson.dumps(bundle(resource))).entries
    assert entry.drafts == () and [f.reason for f in entry.faults] == [ReasonCode(reason)]


def test_a_panel_gives_seq_and_seq_plus_one_and_skips_absent_components():
    resource = panel(D, 20, AT, 120, 80)
    resource["component"][1] = {
        "code": coding("bp_diastolic"),
        "dataAbsentReason": {"text": "cuff error"},
    }
    [entry] = read_bundle(orjson.dumps(bundle(resource))).entries
    assert [(d.metric, d.item["seq"]) for d in entry.drafts] == [("bp_systolic", 20)]
    assert any("absent" in note.diagnostics for note in entry.notes)


def test_large_bundles_are_cut_into_contract_sized_messages():
    resources = [
        observation(D, i, AT, metric="heart_rate", value=60 + i % 50, unit="/min")
        for i in range(MAX_ENTRIES)
    ]
    plan = read_bundle(orjson.dumps(bundle(*resources)))
    messages = contract_messages(plan, {D}, msg_id="m", sent_at=AT)
    assert [m.msg_id for m in messages] == ["m/1", "m/2"]
    assert sum(len(m.sources) for m in messages) == MAX_ENTRIES
    received = datetime.fromisoformat(AT)
    for message in messages:
        assert len(message.sources) <= MAX_READINGS
        outcome = validate_message(
            message.payload, device_type="blood_pressure_monitor", received_at=received
        )
        assert outcome.message_rejection is None
        assert len(outcome.accepted) == len(message.sources)


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        (None, "fallback"),
        ({"value": "bundle-42"}, "bundle-42"),
        ({"system": "urn:x", "value": "bundle-42"}, None),
        ({"value": "x" * 64}, None),
        ({"value": "a\nb"}, None),
    ],
)
def test_message_ids_come_from_the_bundle_identifier(identifier, expected):
    document = bundle() | ({"identifier": identifier} if identifier else {})
    got = message_id_base(read_bundle(orjson.dumps(document)), "fallback")
    if expected is not None:
        assert got == expected
    else:  # a stable name of the identifier, within the contract's 64 characters
        assert len(got) == 32 and got == message_id_base(
            read_bundle(orjson.dumps(document)), "other"
        )


@given(st.binary(max_size=200) | mangled_bundles())
def test_reading_a_bundle_raises_nothing_but_bundle_error(body):
    try:
        plan = read_bundle(body)
    except BundleError:
        return
    for message in contract_messages(plan, plan.device_ids(), msg_id="m", sent_at=AT):
        if message.payload:
            outcome = validate_message(
                message.payload,
                device_type="multiparameter_monitor",
                received_at=datetime.fromisoformat(AT),
            )
            assert outcome.message_rejection is None
