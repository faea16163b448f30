"""The gateway's HTTP API: patients, enrolments and alerts, against a real PostgreSQL. The
patient identifier is never stored in clear (nor echoed when bad), patients list their
enrolments, readings received before an enrolment are attributed when it is recorded, and
clinical alerts are listed and acknowledged by their provider only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from api_fixtures import API_PATIENT_KEY
from gateway_fixtures import assert_problem, cast, enrol, register_device, register_patient, world

from ehealthlab.gateway.pseudonyms import patient_pseudonym
from ehealthlab.store.readings import ReadingRow, ReadingWriter

__all__ = ["cast", "world"]


PATIENT_KEY = API_PATIENT_KEY  # the shared `settings` fixture's


# -- patients -------------------------------------------------------------------------------


def test_the_patient_identifier_is_never_stored_in_clear(client, cast, settings):
    identifier = f"RSSMRA50A01L{uuid.uuid4().hex[:4].upper()}"
    patient = register_patient(client, cast, "p", identifier=identifier)
    with psycopg.connect(settings.require_database_url()) as conn:
        dump = conn.execute(
            "SELECT string_agg(row_to_json(p)::text, ' ') FROM patients p"
        ).fetchone()[0]
        stored = conn.execute(
            "SELECT identifier_hash FROM patients WHERE id = %s", (patient,)
        ).fetchone()[0]
        anywhere = conn.execute(
            "SELECT count(*) FROM enrolments e WHERE e::text ILIKE %s", (f"%{identifier}%",)
        ).fetchone()[0]
    assert identifier.lower() not in dump.lower() and anywhere == 0
    organisation = uuid.UUID(cast.organisations["p"])
    assert stored == patient_pseudonym(PATIENT_KEY.encode(), organisation, identifier)
    # the same person again, typed differently: one patient, its id in the 409
    again = client.post("/api/v1/patients", json={"identifier": f"  {identifier.lower()} ",
                        "label": "again"}, headers=cast.h("p"))  # fmt: skip
    problem = assert_problem(again, 409, detail_has="already registered")
    assert problem["id"] == patient and identifier not in again.text
    # another provider registering the same person gets an unrelated patient
    other = register_patient(client, cast, "q", identifier=identifier)
    assert other != patient


def test_a_bad_identifier_is_not_echoed(client, cast):
    secret = "RSSMRA50A01L219X" * 9  # too long
    answer = client.post("/api/v1/patients", json={"identifier": secret, "label": "x"},
                         headers=cast.h("p"))  # fmt: skip
    assert_problem(answer, 422, field_name="body.identifier")
    assert "RSSMRA" not in answer.text


def test_patients_list_their_enrolments(client, cast, world):
    patients = client.get("/api/v1/patients", headers=cast.h("p")).json()
    mine = next(p for p in patients if p["id"] == world["patient"])
    assert [e["id"] for e in mine["enrolments"]] == [world["enrolment"]]
    assert set(mine) == {"id", "label", "created_at", "enrolments"}
    assert mine["enrolments"][0]["care_plan"] == {"bp_systolic": 2}
    one = client.get(f"/api/v1/patients/{world['patient']}", headers=cast.h("p")).json()
    assert one == mine
    assert_problem(client.get("/api/v1/patients/not-a-uuid", headers=cast.h("p")), 404)


# -- readings received before the enrolment --------------------------------------------------


def _reading(device_id: str, at: datetime, seq: int) -> ReadingRow:
    return ReadingRow(device_id=device_id, metric="bp_systolic", at=at, value=130.0 + seq,
                      measured_at=at, received_at=at + timedelta(seconds=2), seq=seq,
                      msg_id=f"m-{seq}", clock_offset_s=2.0, clock_corrected=False)  # fmt: skip


def test_earlier_readings_are_attributed_when_the_enrolment_is_recorded(client, cast, settings):
    device = register_device(client, cast, "a")["device_id"]
    days = [datetime(2026, 4, d, 9, 0, tzinfo=UTC) for d in (1, 2, 3, 10)]
    with psycopg.connect(settings.require_database_url()) as conn:
        ReadingWriter(conn).write([_reading(device, at, i) for i, at in enumerate(days)])
    patient = register_patient(client, cast, "p")
    made = enrol(client, cast, patient, device, start="2026-04-02", end="2026-04-30")
    assert made.status_code == 201 and made.json()["attributed_readings"] == 3

    def attributed() -> dict[int, str | None]:
        with psycopg.connect(settings.require_database_url()) as conn:
            rows = conn.execute("SELECT seq, patient_id FROM readings WHERE device_id = %s",
                                (device,)).fetchall()  # fmt: skip
        return {seq: str(p) if p else None for seq, p in rows}

    assert attributed() == {0: None, 1: patient, 2: patient, 3: patient}
    # ending it earlier gives the later readings back to "unassigned"
    end = client.post(f"/api/v1/enrolments/{made.json()['id']}/end", json={"end": "2026-04-02"},
                      headers=cast.h("p"))  # fmt: skip
    assert end.status_code == 200
    assert attributed() == {0: None, 1: patient, 2: None, 3: None}


# -- clinical alerts ------------------------------------------------------------------------


def test_alerts_are_raised_listed_and_acknowledged_by_their_provider_only(client, cast, settings):
    device = register_device(client, cast, "a")["device_id"]
    early = datetime(2026, 5, 1, 7, 0, tzinfo=UTC)
    high = [_reading(device, early + timedelta(hours=h), 60 + h) for h in range(3)]  # >= 180
    with psycopg.connect(settings.require_database_url()) as conn:
        ReadingWriter(conn).write(high)  # before the enrolment: unassigned, no alert yet
    patient = register_patient(client, cast, "p")
    made = enrol(client, cast, patient, device, start="2026-05-01")
    assert made.status_code == 201 and made.json()["attributed_readings"] == 3

    def alerts(who: str, status: str = "open") -> list[dict]:
        answer = client.get(f"/api/v1/alerts?status={status}", headers=cast.h(who))
        assert answer.status_code == 200, answer.text
        return [a for a in answer.json() if a["patient_id"] == patient]

    [alert] = alerts("p")  # one per patient, rule and day, raised by the first reading
    assert (alert["rule"], alert["day"], alert["reading"]["value"]) == (
        "bp_systolic_high",
        "2026-05-01",
        190.0,
    )
    assert alert["raised_at"] == "2026-05-01T07:00:02Z"
    assert alerts("q") == []
    assert [a["id"] for a in alerts("operator")] == [alert["id"]]
    assert_problem(client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("q")), 404)
    assert_problem(client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("a")), 403)
    acked = client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("p"))
    assert acked.status_code == 200 and acked.json()["acknowledged_at"] is not None
    again = client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=cast.h("p")).json()
    assert again["acknowledged_at"] == acked.json()["acknowledged_at"]  # the first one stays
    assert alerts("p") == []
    assert [a["id"] for a in alerts("p", "all")] == [alert["id"]]
    assert_problem(client.get("/api/v1/alerts?status=closed", headers=cast.h("p")), 422)
    assert_problem(client.post("/api/v1/alerts/not-a-uuid/ack", headers=cast.h("p")), 404)
