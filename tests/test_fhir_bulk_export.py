"""FHIR Bulk Data export against a real PostgreSQL (and the broker the API needs). Every export
is kicked off, polled and downloaded through the HTTP API as a Bulk Data client would, and
what comes back is compared with what the store holds: the whole store, the types asked for,
what changed since; who may export what; and the kick-off's parameters.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir_bulk_fixtures import (
    ALL_DEVICES,
    ALL_LOCATIONS,
    ALL_ORGANISATIONS,
    ALL_PATIENTS,
    T0,
    device,
    download,
    expected,
    expected_observations,
    export,
    kick_off,
    reading,
    rows,
    validate_sample,
    wait,
    world,
    write,
)
from gateway_fixtures import cast, enrol, register_patient

__all__ = ["cast", "world"]


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
