"""Privacy through the API (issue 13, promise 8): a patient registered with a codice fiscale
and a name is found nowhere in clear — no table, no log line of the run, no bulk export — the
patient key is not in the database, every read of patient data through /api/v1 and /fhir is
audited, and after an erasure FHIR answers 404 OperationOutcomes for the patient and their
Observations, their export is withdrawn and the erasure is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import API_PATIENT_KEY
from fastapi.testclient import TestClient
from psycopg import sql

from ehealthlab.contract.topics import readings_topic
from ehealthlab.fhir.bulk.worker import exports_directory
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.settings import Settings
from ehealthlab.store.erasure import erase_patient
from ehealthlab.store.readings import ReadingRow, ReadingWriter

#: a codice fiscale of the form the providers register (made up) and the name it stands for
FISCAL_CODE = "RSSMRA80A01L219X"
NAME = "Mario Rossi"
FHIR = {"Accept": "application/fhir+json"}
#: bounds a hung export only
DEADLINE_S = 60.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **FHIR}


@pytest.fixture(scope="module")
def pilot(client, settings: Settings) -> dict[str, Any]:
    """An operator, a start-up with a cuff, a provider with the patient (registered with the
    codice fiscale, in lower case and spaced as a clerk may type it) and a second patient;
    a day of readings for the first."""
    operator = bootstrap_operator(settings)["token"]
    who: dict[str, Any] = {"operator": operator}
    for kind in ("startup", "provider"):
        answer = client.post(
            "/api/v1/organisations",
            json={"kind": kind, "name": f"{kind} {uuid.uuid4().hex[:6]}"},
            headers=bearer(operator),
        )
        assert answer.status_code == 201, answer.text
        who[kind] = answer.json()["token"]
        who[f"{kind}_id"] = answer.json()["id"]
    device = client.post(
        "/api/v1/devices",
        json={"type": "blood_pressure_monitor", "model": "BP-1", "serial": "s1"},
        headers=bearer(who["startup"]),
    )
    assert device.status_code == 201, device.text
    who["device"] = device.json()["device_id"]
    patients = []
    for identifier in (f" {FISCAL_CODE.lower()} ", "BNCLGU70B02L219Y"):
        answer = client.post(
            "/api/v1/patients",
            json={"identifier": identifier, "label": f"p{len(patients)}"},
            headers=bearer(who["provider"]),
        )
        assert answer.status_code == 201, answer.text
        patients.append(answer.json()["id"])
    who["patient"], who["other"] = patients
    enrolment = client.post(
        "/api/v1/enrolments",
        json={"patient_id": who["patient"], "device_id": who["device"],
              "municipality": "001272", "start": "2026-01-01", "end": None,
              "care_plan": {"bp_systolic": 1}},
        headers=bearer(who["provider"]),
    )  # fmt: skip
    assert enrolment.status_code == 201, enrolment.text
    at = datetime(2026, 3, 3, 8, tzinfo=UTC)
    rows = [
        ReadingRow(who["device"], metric, at, value, at, at + timedelta(seconds=2), i, "m1",
                   0.0, False)
        for i, (metric, value) in enumerate((("bp_systolic", 190.0), ("bp_diastolic", 80.0)))
    ]  # fmt: skip
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        assert ReadingWriter(conn).write(rows).inserted == 2
        conn.execute(  # what ingest's rules raise for the systolic 190
            "INSERT INTO alerts (patient_id, rule, day, device_id, metric, at, value,"
            " measured_at, raised_at) VALUES (%s, 'bp_systolic_high', '2026-03-03', %s,"
            " 'bp_systolic', %s, 190, %s, %s)",
            (who["patient"], who["device"], at, at, at + timedelta(seconds=2)),
        )
    return who


def test_every_read_of_patient_data_through_the_json_api_is_audited(client, pilot) -> None:
    provider = bearer(pilot["provider"])
    reads = {
        "/api/v1/patients": "GET /api/v1/patients",
        f"/api/v1/patients/{pilot['patient']}": "GET /api/v1/patients/{id}",
        "/api/v1/enrolments": "GET /api/v1/enrolments",
        "/api/v1/alerts": "GET /api/v1/alerts?status=all&limit=200",
    }
    for path in reads:
        assert client.get(path, headers=provider).status_code == 200, path
    trail = client.get("/fhir/AuditEvent", params={"_count": "200"},
                       headers=bearer(pilot["operator"]))  # fmt: skip
    assert trail.status_code == 200, trail.text
    queries = {}
    for entry in trail.json().get("entry", []):
        event = entry["resource"]
        entity = event["entity"][0]
        patients = {e["what"]["reference"] for e in event["entity"][1:]}
        if "query" in entity:
            queries[base64.b64decode(entity["query"]).decode()] = patients
        else:
            queries[entity["what"]["reference"]] = patients
    for request in reads.values():
        if request.endswith("{id}"):
            continue
        assert request in queries, request
        assert f"Patient/{pilot['patient']}" in queries[request], (request, queries)
    assert f"Patient/{pilot['patient']}" in queries


def _audited(url: str, request: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT token_id, patient_ids FROM fhir_audit_events WHERE query = %s", (request,)
        ).fetchall()


def test_the_portals_patient_page_is_audited_as_the_api_reads_it(
    client, pilot, settings: Settings
) -> None:
    """The portal's pages read through the JSON API's functions, so they leave the same rows
    (the session's token, the patients shown)."""
    url = settings.require_database_url()
    before = len(_audited(url, "GET /api/v1/patients"))
    browser = TestClient(client.app)
    form = browser.get("/portal/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf
    login = browser.post("/portal/login", data={"csrf_token": csrf.group(1),
                         "token": pilot["provider"]}, follow_redirects=False)  # fmt: skip
    assert login.status_code == 303, login.text
    page = browser.get("/portal/patients")
    assert page.status_code == 200, page.text
    rows = _audited(url, "GET /api/v1/patients")
    assert len(rows) == before + 1
    assert uuid.UUID(pilot["patient"]) in rows[-1][1]
    assert _audited(url, "GET /api/v1/alerts?status=open&limit=200")


def test_a_label_holding_an_identifier_is_refused(client, pilot) -> None:
    for label in (f"Rossi {FISCAL_CODE.lower()}", "BNC LGU 70B02 L219Y", "x RSSMRA80A01L219X"):
        answer = client.post(
            "/api/v1/patients",
            json={"identifier": "BNCLGU70B02L219Y", "label": label},
            headers=bearer(pilot["provider"]),
        )
        assert answer.status_code == 422, (label, answer.text)
        assert "label" in answer.text


def _all_text(url: str) -> str:
    """Every row of every table of the public schema, as text, and the schema's functions."""
    parts = []
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
            parts.extend(row[0] for row in conn.execute(query))
        parts.extend(
            row[0]
            for row in conn.execute(
                "SELECT prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            )
        )
        parts.extend(
            str(row[0])
            for row in conn.execute(
                "SELECT setting FROM pg_settings UNION ALL"
                " SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting"
            )
        )
    return "\n".join(parts)


def test_no_identifier_in_tables_logs_topics_or_exports_and_the_key_is_not_stored(
    client, pilot, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = bearer(pilot["provider"])
    assert client.get(f"/fhir/Patient/{pilot['patient']}", headers=provider).status_code == 200
    assert client.get("/fhir/Observation", params={"patient": pilot["patient"]},
                      headers=provider).status_code == 200  # fmt: skip
    kick = client.get(f"/fhir/Group/{pilot['provider_id']}/$export",
                      headers={**provider, "Prefer": "respond-async"})  # fmt: skip
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    deadline = time.monotonic() + DEADLINE_S
    while (answer := client.get(status_url, headers=provider)).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    exported = b"".join(
        client.get(item["url"], headers=provider).content for item in answer.json()["output"]
    )
    assert pilot["patient"].encode() in exported  # the patient is in it, by pseudonym only
    pilot["export_status"] = status_url
    secrets_ = (FISCAL_CODE, FISCAL_CODE.lower(), NAME, API_PATIENT_KEY)
    stored = _all_text(settings.require_database_url())
    files = b"".join(p.read_bytes() for p in exports_directory(settings).rglob("*") if p.is_file())
    logged = caplog.text
    for secret in secrets_:
        assert secret.lower() not in stored.lower(), secret
        assert secret.encode().lower() not in files.lower(), secret
        assert secret.encode().lower() not in exported.lower(), secret
        assert secret.lower() not in logged.lower(), secret
    # topics name the device alone (device-contract.md); the device's id is the start-up's
    assert readings_topic(pilot["device"]) == f"ehl/v1/devices/{pilot['device']}/readings"
    # the key lives in the settings (the environment), not in the store: no column, function
    # or setting holds it, and the stored hash is not the identifier's plain SHA-256
    assert json.dumps(API_PATIENT_KEY) not in stored
    assert hashlib.sha256(FISCAL_CODE.encode()).hexdigest() not in stored


def test_an_erased_patient_is_gone_from_fhir_and_their_export_withdrawn(
    client, pilot, settings: Settings
) -> None:
    if "export_status" not in pilot:
        pytest.skip("needs the export of the scan test")
    provider = bearer(pilot["provider"])
    url = settings.require_database_url()
    with psycopg.connect(url, autocommit=True) as conn:
        report = erase_patient(
            conn,
            uuid.UUID(pilot["patient"]),
            erased_by="test",
            exports_dir=exports_directory(settings),
        )
        assert report.counts["readings"] == 2 and report.counts["alerts"] == 1
        assert len(report.exports_withdrawn) == 1 and report.export_directories_deleted == 1
        assert conn.execute("SELECT count(*) FROM patient_erasures").fetchone() == (1,)
    for path in (f"/fhir/Patient/{pilot['patient']}",):
        answer = client.get(path, headers=provider)
        assert answer.status_code in {404, 410}, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"
    search = client.get("/fhir/Observation", params={"patient": pilot["patient"]},
                        headers=provider)  # fmt: skip
    assert search.status_code in {200, 404}
    if search.status_code == 200:
        assert search.json().get("total", 0) == 0 and not search.json().get("entry")
    assert client.get(pilot["export_status"], headers=provider).status_code in {404, 410}
    # the other patient is still there
    assert client.get(f"/fhir/Patient/{pilot['other']}", headers=provider).status_code == 200
    with psycopg.connect(url, autocommit=True) as conn:
        again = erase_patient(conn, uuid.UUID(pilot["patient"]), erased_by="test")
    assert again.erased_before and again.total == 0


def test_the_operator_erases_through_the_api_and_a_provider_may_not(client, pilot) -> None:
    answer = client.post(
        "/api/v1/patients",
        json={"identifier": "VRDLCU90C03L219Z", "label": "p-api"},
        headers=bearer(pilot["provider"]),
    )
    assert answer.status_code == 201, answer.text
    patient = answer.json()["id"]
    path = f"/api/v1/patients/{patient}/erasure"
    refused = client.post(path, json={}, headers=bearer(pilot["provider"]))
    assert refused.status_code == 403, refused.text
    erased = client.post(path, json={"reason": "request 7"}, headers=bearer(pilot["operator"]))
    assert erased.status_code == 200, erased.text
    assert erased.json()["counts"]["patients"] == 1 and not erased.json()["erased_before"]
    assert client.get(f"/api/v1/patients/{patient}",
                      headers=bearer(pilot["provider"])).status_code == 404  # fmt: skip
    again = client.post(path, json={}, headers=bearer(pilot["operator"]))
    assert again.status_code == 200 and again.json()["erased_before"], again.text
    unknown = client.post(f"/api/v1/patients/{uuid.uuid4()}/erasure", json={},
                          headers=bearer(pilot["operator"]))  # fmt: skip
    assert unknown.status_code == 404


def test_an_ingest_run_logs_and_publishes_no_identifier(
    client, pilot, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A device's readings go through the broker and an ingest worker, one high enough to
    raise an alert: the topics carry the device id alone, and no log line of the run holds
    the patient's codice fiscale (ingest never receives it)."""
    caplog.set_level(logging.DEBUG)
    fiscal_code = "GLLNNA85M41L219K"
    provider, startup = bearer(pilot["provider"]), bearer(pilot["startup"])
    cuff = {"type": "blood_pressure_monitor", "model": "BP-1", "serial": "s9"}
    device = client.post("/api/v1/devices", headers=startup, json=cuff)
    assert device.status_code == 201, device.text
    device_id, mqtt = device.json()["device_id"], device.json()["mqtt"]
    registered = {"identifier": fiscal_code, "label": "p-ingest"}
    patient = client.post("/api/v1/patients", headers=provider, json=registered).json()["id"]
    enrolled = client.post("/api/v1/enrolments", headers=provider, json={
        "patient_id": patient, "device_id": device_id, "municipality": "001272",
        "start": "2026-01-01", "end": None, "care_plan": {"bp_systolic": 1}})  # fmt: skip
    assert enrolled.status_code == 201, enrolled.text
    worker = IngestWorker(settings, "privacy-ingest")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    topics = [readings_topic(device_id)]
    try:
        assert worker.subscribed.wait(30), "the worker did not subscribe"
        broker = BrokerAddress(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"])
        at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        payload = json.dumps({
            "schema": "ehl.readings/1", "msg_id": str(uuid.uuid4()),
            "sent_at": datetime.now(UTC).isoformat(),
            "readings": [
                {"seq": 1, "metric": "bp_systolic", "value": 195, "unit": "mm[Hg]",
                 "at": at.isoformat()},
                {"seq": 2, "metric": "bp_diastolic", "value": 90, "unit": "mm[Hg]",
                 "at": at.isoformat()},
            ],
        }).encode()  # fmt: skip
        connection = MqttConnection(broker, mqtt["client_id"]).connect()
        try:
            connection.publish(topics[0], payload)
        finally:
            connection.close()
        url = settings.require_database_url()
        deadline = time.monotonic() + DEADLINE_S  # bounds a failure only
        while True:
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM readings WHERE patient_id = %s),"
                    " (SELECT count(*) FROM alerts WHERE patient_id = %s)",
                    (patient, patient),
                ).fetchone()
            if row == (2, 1):
                break
            assert time.monotonic() < deadline, row
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert all(t.split("/")[:3] == ["ehl", "v1", "devices"] and device_id in t for t in topics)
    assert {mqtt["topics"][k] for k in mqtt["topics"]} <= {
        f"ehl/v1/devices/{device_id}/{leaf}" for leaf in ("readings", "status", "feedback")
    }
    logged = caplog.text.lower()
    assert any(r.name.startswith("ehealthlab.ingest") for r in caplog.records)  # it logged
    for secret in (fiscal_code, fiscal_code.lower(), API_PATIENT_KEY):
        assert secret.lower() not in logged
    assert fiscal_code.lower() not in _all_text(settings.require_database_url()).lower()
