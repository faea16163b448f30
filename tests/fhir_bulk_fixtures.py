"""What the tests of FHIR Bulk Data export share: a small store (`world`) made with the pilot's
cast of tests/gateway_fixtures.py (operator, start-ups a and b, providers p and q): p's patient
measured by a's cuff, q's patient by b's oximeter, and a's scale that nobody is enrolled with
(unassigned readings); a Bulk Data client of the HTTP API (`kick_off`, `wait`, `export`,
`download`); and what the store holds, mapped by the already-validated fast path (`expected`,
`expected_observations`).

The `world` fixture (and gateway_fixtures' `cast`, which it uses) are imported by the test
modules that use them.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
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
from gateway_fixtures import enrol, register_patient

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
