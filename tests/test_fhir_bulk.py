"""FHIR Bulk Data export against a real PostgreSQL (and the broker the API needs).

The pilot's cast (operator, start-ups a and b, providers p and q) and a small store: p's
patient measured by a's cuff, q's patient by b's oximeter, and a's scale that nobody is
enrolled with (unassigned readings). Every export is kicked off, polled and downloaded
through the HTTP API as a Bulk Data client would, and what comes back is compared with what
the store holds, mapped by the already-validated fast path.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import psycopg
import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from gateway_fixtures import Cast, bearer, enrol, register_patient, run_admin
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.bulk import routes, store
from ehealthlab.fhir.bulk.export import (
    LEVEL_TYPES,
    ExportFile,
    ExportRequest,
    UnsupportedError,
    file_name,
    is_file_name,
    manifest,
    observations_ndjson,
    parse_kickoff,
    prefers_async,
    progress,
)
from ehealthlab.fhir.bulk.store import ExportScope
from ehealthlab.fhir.bulk.worker import (
    BackgroundWriter,
    ExportConfig,
    ExportJobRun,
    ExportRunner,
    NdjsonFiles,
    job_directory,
)
from ehealthlab.fhir.mapping.fast import (
    device_json,
    dumps,
    location_json,
    observations_json,
    organization_json,
    patient_json,
)
from ehealthlab.fhir.mapping.rows import (
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
    ReadingRecord,
)
from ehealthlab.settings import Settings
from ehealthlab.store.readings import ReadingRow, ReadingWriter

MODELS = {
    "Observation": Observation,
    "Patient": Patient,
    "Device": Device,
    "Organization": Organization,
    "Location": Location,
    "OperationOutcome": OperationOutcome,
}
T0 = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
#: how long a test waits for an export before giving up (a hang, not a timing assertion)
DEADLINE_S = 60.0


# -- the application, the cast and the store -----------------------------------------------


@pytest.fixture(scope="module")
def cast(client, settings) -> Cast:
    boot = run_admin(settings, "admin", "bootstrap")
    cast = Cast(operator=boot["token"])
    for who, kind in (("a", "startup"), ("b", "startup"), ("p", "provider"), ("q", "provider")):
        answer = client.post(
            "/api/v1/organisations",
            json={"kind": kind, "name": f"{kind} {who} {uuid.uuid4().hex[:6]}"},
            headers=bearer(cast.operator),
        )
        assert answer.status_code == 201, answer.text
        cast.tokens[who] = answer.json()["token"]
        cast.organisations[who] = answer.json()["id"]
    return cast


def device(client, cast, who: str, device_type: str) -> str:
    body = {"type": device_type, "model": "M-1", "serial": uuid.uuid4().hex[:10]}
    answer = client.post("/api/v1/devices", json=body, headers=cast.h(who))
    assert answer.status_code == 201, answer.text
    return answer.json()["device_id"]


def reading(
    device_id: str,
    metric: str,
    at: datetime,
    value: float,
    seq: int,
    *,
    received_at: datetime | None = None,
    offset_s: float = 0.0,
) -> ReadingRow:
    corrected = abs(offset_s) > 120
    return ReadingRow(
        device_id=device_id,
        metric=metric,
        at=at,
        value=value,
        measured_at=at + timedelta(seconds=offset_s) if corrected else at,
        received_at=received_at or datetime.now(UTC),
        seq=seq,
        msg_id=f"m-{seq}",
        clock_offset_s=offset_s,
        clock_corrected=corrected,
    )


def write(settings: Settings, rows: list[ReadingRow]) -> None:
    with psycopg.connect(settings.require_database_url()) as conn:
        ReadingWriter(conn).write(rows)


@pytest.fixture(scope="module")
def world(client, cast, settings) -> dict[str, Any]:
    """p's patient with a's cuff, q's patient with b's oximeter, a's unenrolled scale."""
    cuff = device(client, cast, "a", "blood_pressure_monitor")
    oximeter = device(client, cast, "b", "pulse_oximeter")
    scale = device(client, cast, "a", "weighing_scale")
    patient_p = register_patient(client, cast, "p")
    patient_q = register_patient(client, cast, "q")
    for who, patient, dev, plan in (
        ("p", patient_p, cuff, {"bp_systolic": 1}),
        ("q", patient_q, oximeter, {"spo2": 1}),
    ):
        made = enrol(client, cast, patient, dev, who=who, start="2026-03-01", care_plan=plan)
        assert made.status_code == 201, made.text
    rows: list[ReadingRow] = []
    for day in range(5):
        at = T0 + timedelta(days=day)
        rows += [
            reading(cuff, "bp_systolic", at, 130 + day, 10 * day),
            reading(cuff, "bp_diastolic", at, 85, 10 * day + 1),
            reading(cuff, "heart_rate", at, 70 + day, 10 * day + 2),
            reading(oximeter, "spo2", at, 97, day),
            reading(oximeter, "heart_rate", at, 66, 100 + day),
            reading(scale, "body_weight", at, 80.5, day),
        ]
    # a lone systolic (its diastolic rejected) and a clock-corrected cuff reading
    rows.append(reading(cuff, "bp_systolic", T0 + timedelta(days=6), 150, 70))
    rows.append(reading(cuff, "heart_rate", T0 + timedelta(days=7), 61, 71, offset_s=-3600))
    write(settings, rows)
    return {
        "cuff": cuff,
        "oximeter": oximeter,
        "scale": scale,
        "patient_p": patient_p,
        "patient_q": patient_q,
    }


# -- a Bulk Data client ---------------------------------------------------------------------


def kick_off(client, headers: dict[str, str], path: str, **params: str) -> str:
    """Start an export; its status URL."""
    answer = client.get(
        path,
        params=params,
        headers={**headers, "Prefer": "respond-async", "Accept": "application/fhir+json"},
    )
    assert answer.status_code == 202, answer.text
    return answer.headers["Content-Location"]


def wait(client, headers: dict[str, str], status_url: str):
    """Poll until the export is no longer in progress; the final answer."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        answer = client.get(status_url, headers=headers)
        if answer.status_code != 202 or time.monotonic() > deadline:
            return answer
        assert answer.headers["X-Progress"] and len(answer.headers["X-Progress"]) < 100
        assert answer.headers["Retry-After"].isdigit()
        time.sleep(0.05)


def export(client, headers: dict[str, str], path: str, **params: str) -> dict[str, Any]:
    """Kick off, wait, and return the manifest."""
    answer = wait(client, headers, kick_off(client, headers, path, **params))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert "Expires" in answer.headers
    return answer.json()


def download(client, headers: dict[str, str], result: dict[str, Any]) -> dict[str, list[bytes]]:
    """Every file of a manifest, lines by resource type (each line checked against its count
    and its declared type)."""
    lines: dict[str, list[bytes]] = {}
    for item in result["output"] + result["error"]:
        answer = client.get(item["url"], headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/fhir+ndjson")
        got = answer.content.splitlines()
        assert len(got) == item["count"] and answer.content.endswith(b"\n")
        assert all(orjson.loads(line)["resourceType"] == item["type"] for line in got)
        lines.setdefault(item["type"], []).extend(got)
    return lines


def validate_sample(lines: dict[str, list[bytes]], every: int = 1) -> None:
    """Each line (or every n-th) is a valid R4B resource of its type."""
    for resource_type, found in lines.items():
        for line in found[::every]:
            MODELS[resource_type].model_validate_json(line)


# -- what the store holds, mapped by the fast path ---------------------------------------------


def rows(settings: Settings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.require_database_url()) as conn:
        return conn.execute(query, params).fetchall()


READINGS = (
    "SELECT r.device_id, d.device_type, r.metric, r.at, r.value, r.measured_at, r.received_at,"
    " r.clock_corrected, r.patient_id, p.organisation_id FROM readings r"
    " JOIN devices d USING (device_id) LEFT JOIN patients p ON p.id = r.patient_id"
)


def expected_observations(settings: Settings, where: str = "", *params: Any) -> set[bytes]:
    found = rows(settings, f"{READINGS} {where}", *params)
    return {dumps(o) for o in observations_json(ReadingRecord(*row) for row in found)}


def expected(settings: Settings, resource_type: str, query: str, *params: Any) -> set[bytes]:
    record, mapper = {
        "Patient": (PatientRecord, patient_json),
        "Device": (DeviceRecord, device_json),
        "Organization": (OrganisationRecord, organization_json),
        "Location": (MunicipalityRecord, location_json),
    }[resource_type]
    return {dumps(mapper(record(*row))) for row in rows(settings, query, *params)}


ALL_PATIENTS = "SELECT id, organisation_id, identifier_hash FROM patients"
ALL_DEVICES = (
    "SELECT device_id, organisation_id, device_type, model, serial, firmware, revoked_at"
    " FROM devices"
)
ALL_ORGANISATIONS = "SELECT id, kind, name FROM organisations"
ALL_LOCATIONS = (
    "SELECT istat_code, name, latitude, longitude, snai_class, snai_class_label FROM municipalities"
)


# -- end to end -------------------------------------------------------------------------------


def test_system_export_gives_the_whole_store_as_valid_ndjson(client, cast, world, settings):
    result = export(client, cast.h("operator"), "/fhir/$export")
    assert result["requiresAccessToken"] is True
    assert result["request"].endswith("/fhir/$export")
    assert result["error"] == []
    transaction_time = datetime.fromisoformat(result["transactionTime"].replace("Z", "+00:00"))
    assert transaction_time <= datetime.now(UTC)
    lines = download(client, cast.h("operator"), result)
    assert set(lines) == {"Organization", "Location", "Device", "Patient", "Observation"}
    validate_sample({t: v for t, v in lines.items() if t != "Location"})
    validate_sample({"Location": lines["Location"]}, every=25)
    # exactly the store, unassigned readings included, each resource once
    for resource_type, found in lines.items():
        assert len(found) == len(set(found)), resource_type
    assert set(lines["Observation"]) == expected_observations(settings)
    assert set(lines["Patient"]) == expected(settings, "Patient", ALL_PATIENTS)
    assert set(lines["Device"]) == expected(settings, "Device", ALL_DEVICES)
    assert set(lines["Organization"]) == expected(settings, "Organization", ALL_ORGANISATIONS)
    assert set(lines["Location"]) == expected(settings, "Location", ALL_LOCATIONS)
    assert len(lines["Location"]) == 312
    observations = [orjson.loads(line) for line in lines["Observation"]]
    assert any("subject" not in o for o in observations)  # the unassigned scale
    panels = [o for o in observations if o["code"]["coding"][0]["code"] == "85354-9"]
    assert len(panels) == 6  # five pairs and the lone systolic
    assert any("dataAbsentReason" in c for o in panels for c in o["component"])


def test_type_limits_the_files_to_the_types_asked_for(client, cast, world, settings):
    result = export(
        client,
        cast.h("operator"),
        "/fhir/$export",
        _type="Patient,Observation",
        _outputFormat="ndjson",
    )
    assert {item["type"] for item in result["output"]} == {"Patient", "Observation"}
    repeated = client.get(
        "/fhir/$export?_type=Patient&_type=Device",
        headers={**cast.h("operator"), "Prefer": "respond-async"},
    )
    assert repeated.status_code == 202
    done = wait(client, cast.h("operator"), repeated.headers["Content-Location"])
    assert {item["type"] for item in done.json()["output"]} == {"Patient", "Device"}


def test_since_gives_what_was_stored_or_attributed_later(client, cast, world, settings):
    since = datetime.now(UTC)
    time.sleep(0.01)  # received_at after `since`, on a clock that may be coarse
    late_day = T0 + timedelta(days=20)
    write(settings, [reading(world["oximeter"], "spo2", late_day, 95, 500)])
    # a device with readings stored before `since`, enrolled after it: they changed then
    spare = device(client, cast, "a", "thermometer")
    early = datetime.now(UTC) - timedelta(hours=1)
    write(
        settings,
        [
            reading(spare, "body_temperature", T0 + timedelta(days=d), 36.6, d, received_at=early)
            for d in range(3)
        ],
    )
    patient = register_patient(client, cast, "p")
    made = enrol(
        client, cast, patient, spare, start="2026-03-01", care_plan={"body_temperature": 1}
    )
    assert made.status_code == 201 and made.json()["attributed_readings"] == 3
    result = export(
        client,
        cast.h("operator"),
        "/fhir/$export",
        _type="Observation,Patient",
        _since=since.isoformat(),
    )
    lines = download(client, cast.h("operator"), result)
    observations = [orjson.loads(line) for line in lines["Observation"]]
    assert sorted(o["device"]["reference"] for o in observations) == sorted(
        [f"Device/{world['oximeter']}"] + [f"Device/{spare}"] * 3
    )
    assert [orjson.loads(line)["id"] for line in lines["Patient"]] == [patient]
    # a '+' of the offset sent unencoded arrives as a space: still understood
    plus = (since + timedelta(days=365)).astimezone(timezone(timedelta(hours=1))).isoformat()
    answer = client.get(
        f"/fhir/$export?_since={plus}", headers={**cast.h("operator"), "Prefer": "respond-async"}
    )
    assert answer.status_code == 202, answer.text
    empty = wait(client, cast.h("operator"), answer.headers["Content-Location"]).json()
    assert {item["type"] for item in empty["output"]} == {"Location"}  # no change time: all


# -- who may export what -----------------------------------------------------------------------


def test_a_provider_exports_its_own_group_and_nothing_else(client, cast, world, settings):
    p = cast.organisations["p"]
    result = export(client, cast.h("p"), f"/fhir/Group/{p}/$export")
    lines = download(client, cast.h("p"), result)
    assert set(lines) == {"Organization", "Device", "Patient", "Observation"}
    validate_sample(lines)
    assert set(lines["Patient"]) == expected(
        settings, "Patient", f"{ALL_PATIENTS} WHERE organisation_id = %s", p
    )
    assert set(lines["Observation"]) == expected_observations(
        settings, "WHERE p.organisation_id = %s", p
    )
    observations = [orjson.loads(line) for line in lines["Observation"]]
    assert observations and all(
        o["performer"] == [{"reference": f"Organization/{p}"}] for o in observations
    )
    devices = {orjson.loads(line)["id"] for line in lines["Device"]}
    assert world["cuff"] in devices
    assert world["oximeter"] not in devices and world["scale"] not in devices
    organisations = {orjson.loads(line)["id"] for line in lines["Organization"]}
    assert organisations == {p, cast.organisations["a"]}  # itself, its devices' start-up
    # the patient level is the same for a provider
    same = download(client, cast.h("p"), export(client, cast.h("p"), "/fhir/Patient/$export"))
    assert {t: set(v) for t, v in same.items()} == {t: set(v) for t, v in lines.items()}
    # the operator sees who exported what: the kick-offs and every file downloaded
    audited = rows(
        settings,
        "SELECT resource_type, resource_id, http_status, detail FROM fhir_audit_events"
        " WHERE organisation_id = %s AND operation = 'export'",
        p,
    )
    started = [r[:3] for r in audited if "started" in r[3]]
    assert sorted(started, key=str) == [("Group", p, 202), ("Patient", p, 202)]
    downloaded = {r[0] for r in audited if "downloaded" in r[3]}
    assert downloaded == set(lines)


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        ("p", "/fhir/Group/{q}/$export", 404),
        ("p", "/fhir/Group/{a}/$export", 404),
        ("p", "/fhir/Group/not-a-uuid/$export", 404),
        ("p", "/fhir/$export", 403),
        ("q", "/fhir/Group/{p}/$export", 404),
        ("a", "/fhir/$export", 403),
        ("a", "/fhir/Group/{p}/$export", 403),
        ("a", "/fhir/Patient/$export", 403),
        ("operator", "/fhir/Group/{a}/$export", 404),
        ("operator", "/fhir/Group/{random}/$export", 404),
        ("nobody", "/fhir/$export", 401),
        ("nobody", "/fhir/Group/{p}/$export", 401),
    ],
)
def test_kick_off_refusals_are_operation_outcomes(client, cast, who, path, status):
    ids = {**cast.organisations, "random": str(uuid.uuid4())}
    headers = {"Prefer": "respond-async"}
    if who != "nobody":
        headers |= cast.h(who)
    answer = client.get(path.format(**ids), headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    OperationOutcome.model_validate(answer.json())
    assert "Content-Location" not in answer.headers


def test_the_operator_exports_any_group_and_every_patient(client, cast, world, settings):
    q = cast.organisations["q"]
    group = download(
        client, cast.h("operator"), export(client, cast.h("operator"), f"/fhir/Group/{q}/$export")
    )
    assert {orjson.loads(line)["id"] for line in group["Patient"]} == {world["patient_q"]}
    everyone = download(
        client, cast.h("operator"), export(client, cast.h("operator"), "/fhir/Patient/$export")
    )
    assert set(everyone["Patient"]) == expected(settings, "Patient", ALL_PATIENTS)
    # the patient level holds patients' data only: no unassigned reading
    assert set(everyone["Observation"]) == expected_observations(
        settings, "WHERE r.patient_id IS NOT NULL"
    )


def test_status_and_files_are_only_for_the_organisation_that_asked(client, cast, world):
    p = cast.organisations["p"]
    status_url = kick_off(client, cast.h("p"), f"/fhir/Group/{p}/$export")
    result = wait(client, cast.h("p"), status_url).json()
    file_url = result["output"][0]["url"]
    for who in ("q", "a", "operator"):
        for url in (status_url, file_url):
            answer = client.get(url, headers=cast.h(who))
            assert answer.status_code == 404, (who, url)
            OperationOutcome.model_validate(answer.json())
        assert client.delete(status_url, headers=cast.h(who)).status_code == 404
    for url in (status_url, file_url):
        answer = client.get(url)  # the same bearer token check as the kick-off
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        OperationOutcome.model_validate(answer.json())
    # names that are not files of the export
    for name in ("..%2F..%2Fetc%2Fpasswd", "Observation.99.ndjson", "x"):
        bad = client.get(file_url.rsplit("/", 1)[0] + "/" + name, headers=cast.h("p"))
        assert bad.status_code == 404


# -- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "prefer", "code"),
    [
        ("_type=Foo", "respond-async", "not-supported"),
        ("_type=Group", "respond-async", "not-supported"),
        ("_since=yesterday", "respond-async", "invalid"),
        ("_since=2026-01-01", "respond-async", "invalid"),
        ("_since=2026-01-01T00:00:00Z&_since=2026-02-01T00:00:00Z", "respond-async", "invalid"),
        ("_outputFormat=text/csv", "respond-async", "not-supported"),
        ("_elements=id", "respond-async", "not-supported"),
        ("_typeFilter=Observation%3Fcode%3D1", "respond-async", "not-supported"),
        ("_types=Patient", "respond-async", "invalid"),
        ("", "respond-sync", "not-supported"),
    ],
)
def test_bad_kick_off_parameters_are_400(client, cast, query, prefer, code):
    answer = client.get(f"/fhir/$export?{query}", headers={**cast.h("operator"), "Prefer": prefer})
    assert answer.status_code == 400, answer.text
    outcome = OperationOutcome.model_validate(answer.json())
    assert outcome.issue[0].code == code


def test_lenient_handling_ignores_unsupported_parameters_and_says_so(client, cast, world):
    headers = {**cast.h("operator"), "Prefer": "respond-async, handling=lenient"}
    answer = client.get("/fhir/$export?_type=Organization&_elements=id", headers=headers)
    assert answer.status_code == 202, answer.text
    result = wait(client, cast.h("operator"), answer.headers["Content-Location"]).json()
    assert [item["type"] for item in result["error"]] == ["OperationOutcome"]
    lines = download(client, cast.h("operator"), result)
    outcome = OperationOutcome.model_validate_json(lines["OperationOutcome"][0])
    assert "_elements" in (outcome.issue[0].diagnostics or "")


def test_no_prefer_header_is_taken_as_respond_async(client, cast, world):
    answer = client.get("/fhir/$export?_type=Organization", headers=cast.h("operator"))
    assert answer.status_code == 202
    assert wait(client, cast.h("operator"), answer.headers["Content-Location"]).status_code == 200


# -- cancel, failure, expiry, limits ---------------------------------------------------------------


def test_delete_cancels_an_export_and_discards_its_files(client, cast, world, settings):
    status_url = kick_off(client, cast.h("operator"), "/fhir/$export")
    job_id = uuid.UUID(status_url.rsplit("/", 1)[1])
    cancelled = client.delete(status_url, headers=cast.h("operator"))
    assert cancelled.status_code == 202
    assert client.get(status_url, headers=cast.h("operator")).status_code == 404
    assert client.delete(status_url, headers=cast.h("operator")).status_code == 404
    # the job, wherever it was, stops and leaves no file behind
    deadline = time.monotonic() + DEADLINE_S
    while job_directory(settings, job_id).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job_directory(settings, job_id).exists()
    # a completed export's files are discarded by DELETE
    done_url = kick_off(client, cast.h("operator"), "/fhir/$export", _type="Organization")
    file_url = wait(client, cast.h("operator"), done_url).json()["output"][0]["url"]
    assert client.get(file_url, headers=cast.h("operator")).status_code == 200
    assert client.delete(done_url, headers=cast.h("operator")).status_code == 202
    assert client.get(file_url, headers=cast.h("operator")).status_code == 404
    assert not job_directory(settings, uuid.UUID(done_url.rsplit("/", 1)[1])).exists()


def test_a_failed_export_answers_500_with_an_operation_outcome(client, cast, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Location",), None))
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        store.fail_job(conn, job.id, None, "the export failed: disk full")
    answer = client.get(f"/fhir/$export-poll-status/{job.id}", headers=cast.h("operator"))
    assert answer.status_code == 500
    outcome = OperationOutcome.model_validate(answer.json())
    assert outcome.issue[0].diagnostics == "the export failed: disk full"


def test_an_expired_export_is_gone(client, cast, world, settings):
    status_url = kick_off(client, cast.h("operator"), "/fhir/$export", _type="Organization")
    result = wait(client, cast.h("operator"), status_url).json()
    job_id = uuid.UUID(status_url.rsplit("/", 1)[1])
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        conn.execute(
            "UPDATE fhir_export_jobs SET expires_at = now() - interval '1 second' WHERE id = %s",
            (job_id,),
        )
    assert client.get(status_url, headers=cast.h("operator")).status_code == 404
    assert client.get(result["output"][0]["url"], headers=cast.h("operator")).status_code == 404
    ExportRunner(settings).sweep()  # what the runner does every few seconds
    assert not job_directory(settings, job_id).exists()


def test_too_many_exports_at_once_are_429(client, cast, settings):
    waiting = [
        new_job(
            settings,
            cast,
            "q",
            ExportRequest("patient", ("Patient",), None),
            provider=uuid.UUID(cast.organisations["q"]),
        )
        for _ in range(routes.MAX_ACTIVE_EXPORTS)
    ]
    answer = client.get("/fhir/Patient/$export", headers={**cast.h("q"), "Prefer": "respond-async"})
    assert answer.status_code == 429
    assert answer.headers["Retry-After"].isdigit()
    OperationOutcome.model_validate(answer.json())
    for job in waiting:
        assert (
            client.delete(f"/fhir/$export-poll-status/{job.id}", headers=cast.h("q")).status_code
            == 202
        )
    assert (
        client.get(
            "/fhir/Patient/$export", headers={**cast.h("q"), "Prefer": "respond-async"}
        ).status_code
        == 202
    )


def new_job(
    settings: Settings,
    cast: Cast,
    who: str,
    request: ExportRequest,
    provider: uuid.UUID | None = None,
) -> store.ExportJob:
    """A queued job written straight into the store (no runner sees it until a sweep)."""
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        return store.create_job(
            conn,
            uuid.UUID(cast.organisations.get(who) or operator_id(conn)),
            request,
            provider,
            "http://testserver/fhir/$export",
        )


def operator_id(conn) -> str:
    return str(conn.execute("SELECT id FROM organisations WHERE kind = 'operator'").fetchone()[0])


# -- a job's life: stopping, resuming ------------------------------------------------------


def test_a_stopping_process_gives_its_job_back_and_another_resumes_it(cast, world, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Observation",), None))
    stop = threading.Event()
    stop.set()  # the process is stopping as the job starts
    config = ExportConfig(batch_rows=2)
    ExportJobRun(settings, job.id, "dying-process", stop, config).run()
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        back = store.get_job(conn, job.id)
        assert back is not None and back.status == "queued" and back.attempts == 1
        assert not job_directory(settings, job.id).exists()
        # a process that dies leaves its job "running", silent: a sweep takes it up again
        conn.execute(
            "UPDATE fhir_export_jobs SET status = 'running', worker = 'dead',"
            " heartbeat_at = now() - interval '1 hour' WHERE id = %s",
            (job.id,),
        )
    runner = ExportRunner(settings, ExportConfig(batch_rows=2))
    try:
        runner.sweep()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with psycopg.connect(settings.require_database_url()) as conn:
                done = store.get_job(conn, job.id)
            if done is not None and done.status not in ("queued", "running"):
                break
            time.sleep(0.05)
    finally:
        runner.close()
    assert done is not None and done.status == "completed" and done.attempts == 2
    assert sum(f.count for f in done.export_files) == len(expected_observations(settings))


def test_a_cancelled_job_is_not_run(cast, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Location",), None))
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        assert store.cancel_job(conn, job.id, job.organisation_id)
    ExportJobRun(settings, job.id, "w", threading.Event(), ExportConfig()).run()
    assert not job_directory(settings, job.id).exists()


def test_files_are_split_at_the_configured_number_of_lines(cast, world, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Location",), None))
    ExportJobRun(settings, job.id, "w", threading.Event(), ExportConfig(file_lines=100)).run()
    with psycopg.connect(settings.require_database_url()) as conn:
        done = store.get_job(conn, job.id)
    assert done is not None and done.status == "completed"
    assert [(f.name, f.count) for f in done.export_files] == [
        ("Location.1.ndjson", 100),
        ("Location.2.ndjson", 100),
        ("Location.3.ndjson", 100),
        ("Location.4.ndjson", 12),
    ]
    lines = b"".join(
        (job_directory(settings, job.id) / f.name).read_bytes() for f in done.export_files
    ).splitlines()
    assert set(lines) == expected(settings, "Location", ALL_LOCATIONS)


def test_the_background_writer_writes_every_line_in_order_and_reports_failures(tmp_path):
    files = NdjsonFiles(tmp_path, "Patient", file_lines=3)
    out = BackgroundWriter(files, depth=1)
    for start in range(0, 10, 2):
        out.write([f"{n}".encode() for n in range(start, start + 2)])
    out.close()
    assert [(f.name, f.count) for f in files.files] == [
        ("Patient.1.ndjson", 3),
        ("Patient.2.ndjson", 3),
        ("Patient.3.ndjson", 3),
        ("Patient.4.ndjson", 1),
    ]
    written = b"".join((tmp_path / f.name).read_bytes() for f in files.files)
    assert written == b"".join(f"{n}\n".encode() for n in range(10))
    broken = BackgroundWriter(NdjsonFiles(tmp_path / "missing", "Patient", file_lines=3))
    broken.write([b"1"])
    with pytest.raises(OSError, match="missing"):
        try:
            for _ in range(100):  # the failure surfaces at a later write, or at close
                broken.write([b"2"])
        finally:
            broken.close()


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "params", "prefer", "types", "ignored"),
    [
        ("system", [], None, LEVEL_TYPES["system"], ()),
        ("system", [("_type", "Observation, Patient")], None, ("Patient", "Observation"), ()),
        (
            "group",
            [("_type", "Patient"), ("_type", "Patient,Device")],
            None,
            ("Device", "Patient"),
            (),
        ),
        (
            "patient",
            [("_outputFormat", "application/fhir+ndjson")],
            None,
            LEVEL_TYPES["patient"],
            (),
        ),
        (
            "system",
            [("_elements", "id"), ("patient", "x"), ("_elements", "y")],
            "respond-async; handling=lenient",
            LEVEL_TYPES["system"],
            ("_elements", "patient"),
        ),
    ],
)
def test_kick_off_parameters(level, params, prefer, types, ignored):
    asked = parse_kickoff(level, params, prefer=prefer)
    assert asked.types == types and asked.ignored == ignored and asked.since is None


@pytest.mark.parametrize(
    ("level", "params", "error"),
    [
        ("group", [("_type", "Location")], UnsupportedError),
        ("system", [("_type", "Binary")], UnsupportedError),
        ("system", [("_outputFormat", "application/fhir+json")], UnsupportedError),
        ("system", [("_typeFilter", "x")], UnsupportedError),
        ("system", [("_since", "2026-01-01T00:00:00")], InvalidInputError),
        ("system", [("foo", "bar")], InvalidInputError),
    ],
)
def test_kick_off_parameters_refused(level, params, error):
    with pytest.raises(error):
        parse_kickoff(level, params)


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T11:00:00+01:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T11:00:00 01:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T09:00:00.5-01:00", datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_since_instants(text, instant):
    assert parse_kickoff("system", [("_since", text)]).since == instant


@pytest.mark.parametrize(
    ("prefer", "wanted"),
    [
        (None, True),
        ("respond-async", True),
        ("respond-async, handling=lenient", True),
        ("handling=strict", True),
        ("respond-sync", False),
        ("wait=10, respond-sync", False),
    ],
)
def test_prefer_header(prefer, wanted):
    assert prefers_async(prefer) is wanted


def test_file_names_and_manifest():
    assert file_name("Observation", 1) == "Observation.1.ndjson"
    assert is_file_name("Patient.12.ndjson")
    for bad in (
        "../Patient.1.ndjson",
        "Patient.0.ndjson",
        "Patient.1.json",
        "Binary.1.ndjson",
        "Patient.1.ndjson/x",
        "Patient.01.ndjson",
    ):
        assert not is_file_name(bad)
    with pytest.raises(ValueError, match="no export file"):
        file_name("Binary", 1)
    files = [
        ExportFile("Patient", "Patient.1.ndjson", 3),
        ExportFile("OperationOutcome", "OperationOutcome.1.ndjson", 1),
    ]
    got = manifest(
        transaction_time=datetime(2026, 3, 1, 11, tzinfo=timezone(timedelta(hours=1))),
        request_url="https://x/fhir/$export",
        files=files,
        file_url=lambda name: f"https://x/files/{name}",
    )
    assert got == {
        "transactionTime": "2026-03-01T10:00:00Z",
        "request": "https://x/fhir/$export",
        "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": "https://x/files/Patient.1.ndjson", "count": 3}],
        "error": [
            {
                "type": "OperationOutcome",
                "url": "https://x/files/OperationOutcome.1.ndjson",
                "count": 1,
            }
        ],
    }
    assert progress("queued", 0) == "queued"
    assert len(progress("running", 10**15)) < 100


def test_export_queries_select_by_scope():
    """The provider filter appears exactly where a scope has a provider."""
    p = uuid.uuid4()
    for resource_type, query in store.QUERIES.items():
        for scope in (ExportScope(None, False), ExportScope(None, True), ExportScope(p, True)):
            text = repr(query(scope, None))
            assert ("%(provider)s" in text) == (
                scope.provider_id is not None and resource_type != "Location"
            ), (resource_type, scope)


# -- observations_ndjson: the streaming pairing equals the fast path's -------------------------

DEVICES = [
    ("bpm-0000000000000001", "blood_pressure_monitor"),
    ("bpm-0000000000000002", "blood_pressure_monitor"),
    ("mpm-0000000000000003", "multiparameter_monitor"),
]
METRICS_OF = {
    "blood_pressure_monitor": ["bp_systolic", "bp_diastolic", "heart_rate"],
    "multiparameter_monitor": ["bp_systolic", "bp_diastolic", "spo2", "steps"],
}


@st.composite
def sorted_readings(draw) -> list[ReadingRecord]:
    """Readings of a few devices at a few times (at most one per device, metric and time, as
    the store's key says), sorted by device and time in any metric order."""
    keys = draw(
        st.sets(
            st.tuples(
                st.sampled_from(DEVICES),
                st.integers(0, 4),
                st.sampled_from(sorted({m for ms in METRICS_OF.values() for m in ms})),
            ),
            max_size=30,
        )
    )
    records = []
    for (device_id, device_type), minute, metric in keys:
        if metric not in METRICS_OF[device_type]:
            continue
        at = T0 + timedelta(minutes=minute)
        records.append(
            ReadingRecord(device_id, device_type, metric, at, 100.0, at, at, False, None, None)
        )
    shuffled = draw(st.permutations(records))
    return sorted(shuffled, key=lambda r: (r.device_id, r.at))


@given(sorted_readings())
def test_streamed_observations_equal_the_fast_path(readings):
    streamed = [dumps(o) for o in observations_ndjson(iter(readings))]
    assert sorted(streamed) == sorted(dumps(o) for o in observations_json(readings))


def test_streamed_observations_hold_one_panel_at_a_time():
    """A generator: it gives the first Observation before reading the whole input."""

    def endless() -> Iterator[ReadingRecord]:
        minute = 0
        while True:
            at = T0 + timedelta(minutes=minute)
            for metric in ("bp_diastolic", "bp_systolic", "heart_rate"):
                yield ReadingRecord(
                    DEVICES[0][0], DEVICES[0][1], metric, at, 80.0, at, at, False, None, None
                )
            minute += 1

    first = list(_take(observations_ndjson(endless()), 5))
    assert len(first) == 5


def _take(items: Iterable[Any], n: int) -> Iterator[Any]:
    for count, item in enumerate(items):
        if count == n:
            return
        yield item
