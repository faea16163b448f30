"""The isolation matrix's probes of FHIR (every search parameter, paging links, $export,
Bundles, QuestionnaireResponses), of the portal's enrolment form, and the check that no
refused change changed anything.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from isolation_probes import (
    ORGS,
    Matrix,
    Probe,
    enrolment_body,
    foreign_of,
    foreign_patient_enrolment,
    others,
)

from ehealthlab.fhir.mapping.codes import POPULATION_SYSTEM
from ehealthlab.fhir.measures.definitions import COMPOSITE_URL
from ehealthlab.fhir.questionnaires.sus import SUS_URL
from ehealthlab.fhir.search.parameters import PARAMETERS
from ehealthlab.fhir.transaction.entry import READING_SEQ_SYSTEM
from ehealthlab.mqtt import BrokerAddress, MqttConnection

WAIT_S = 60.0  # bounds a failure only

# -- FHIR: every search parameter, paging links, $export, Bundles ------------------------------

#: (type, parameter) -> a value naming world n's thing, or catching everything
Value = Callable[[Matrix, int], str]


def _owner_read(m: Matrix, who: str, path: str) -> dict[str, Any]:
    answer = m.ask(who, "GET", path)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _first_identifier(m: Matrix, who: str, path: str) -> str:
    identifier = _owner_read(m, who, path)["identifier"][0]
    return f"{identifier['system']}|{identifier['value']}"


def _org(m: Matrix, n: int, kind: str) -> Any:
    return m.world.orgs[("A" if n == 1 else "B") if kind == "startup" else ("P" if n == 1 else "Q")]


def _obs(m: Matrix, n: int) -> str:
    return sorted(m.world.observations[n])[0]


SEARCH_VALUES: dict[tuple[str, str], Value] = {
    ("Observation", "_id"): _obs,
    ("Observation", "patient"): lambda m, n: _org(m, n, "provider").patient,
    ("Observation", "subject"): lambda m, n: f"Patient/{_org(m, n, 'provider').patient}",
    ("Observation", "device"): lambda m, n: f"Device/{_org(m, n, 'startup').devices['cuff']}",
    ("Observation", "code"): lambda m, n: "85354-9",
    ("Observation", "component-code"): lambda m, n: "8480-6",
    ("Observation", "combo-code"): lambda m, n: "85354-9",
    ("Observation", "category"): lambda m, n: "vital-signs",
    ("Observation", "date"): lambda m, n: "ge2000",
    ("Observation", "identifier"): lambda m, n: _first_identifier(
        m, "operator", f"/fhir/Observation/{_obs(m, n)}"
    ),
    ("Patient", "_id"): lambda m, n: _org(m, n, "provider").patient,
    ("Patient", "identifier"): lambda m, n: _first_identifier(
        m, "operator", f"/fhir/Patient/{_org(m, n, 'provider').patient}"
    ),
    ("Patient", "organization"): lambda m, n: f"Organization/{_org(m, n, 'provider').id}",
    ("Device", "_id"): lambda m, n: _org(m, n, "startup").devices["cuff"],
    ("Device", "identifier"): lambda m, n: _first_identifier(
        m, "operator", f"/fhir/Device/{_org(m, n, 'startup').devices['cuff']}"
    ),
    ("Device", "type"): lambda m, n: "blood_pressure_monitor",
    ("Device", "organization"): lambda m, n: f"Organization/{_org(m, n, 'startup').id}",
    ("Device", "status"): lambda m, n: "active",
    ("Organization", "_id"): lambda m, n: _org(m, n, "startup").id,
    ("Organization", "identifier"): lambda m, n: "010203",
    ("Organization", "name"): lambda m, n: "Isolation",
    ("Organization", "type"): lambda m, n: "startup,provider",
    ("AuditEvent", "_id"): lambda m, n: _org(m, n, "provider").id,
    ("AuditEvent", "date"): lambda m, n: "ge2000",
    ("AuditEvent", "agent"): lambda m, n: f"Organization/{_org(m, n, 'provider').id}",
    ("AuditEvent", "entity"): lambda m, n: f"Patient/{_org(m, n, 'provider').patient}",
    ("AuditEvent", "patient"): lambda m, n: _org(m, n, "provider").patient,
    ("AuditEvent", "outcome"): lambda m, n: "0",
    ("AuditEvent", "subtype"): lambda m, n: "read",
    ("AuditEvent", "action"): lambda m, n: "R",
    ("QuestionnaireResponse", "_id"): lambda m, n: _org(m, n, "provider").questionnaire_response,
    ("QuestionnaireResponse", "patient"): lambda m, n: _org(m, n, "provider").patient,
    ("QuestionnaireResponse", "subject"): lambda m, n: f"Patient/{_org(m, n, 'provider').patient}",
    ("QuestionnaireResponse", "authored"): lambda m, n: "ge2000",
    ("QuestionnaireResponse", "questionnaire"): lambda m, n: SUS_URL,
    ("MeasureReport", "_id"): lambda m, n: _org(m, n, "provider").id,
    ("MeasureReport", "measure"): lambda m, n: COMPOSITE_URL,
    ("MeasureReport", "subject"): lambda m, n: f"Group/startup-{_org(m, n, 'startup').id}",
    ("MeasureReport", "period"): lambda m, n: "ge2000",
    ("MeasureReport", "_tag"): lambda m, n: f"{POPULATION_SYSTEM}|real",
}
#: reference data and definitions, the same for every caller: no tenant's rows behind them
PUBLIC_SEARCHES = {
    "Location": "the municipalities (ISTAT reference data)",
    "Measure": "the indicators' definitions",
}


def search(resource_type: str, *, by_post: bool = False) -> Probe:
    """Every search parameter of the type, each naming the other world's thing (or catching
    everything), as every organisation: refused (scopes) or no entry of the other world."""

    def probe(m: Matrix, route: str) -> None:
        path = f"/fhir/{resource_type}" + ("/_search" if by_post else "")
        for spec in PARAMETERS[resource_type]:
            for who in ORGS:
                value = SEARCH_VALUES[(resource_type, spec.name)](m, 3 - m.world.orgs[who].world)
                if by_post:
                    answer = m.ask(who, "POST", path, data={spec.name: value})
                else:
                    answer = m.ask(who, "GET", path, params={spec.name: value})
                assert answer.status_code in (200, 403), (route, spec.name, who, answer.text)
                m.clean(f"{route} {spec.name}", who, answer, named=value)
        m.pairs.add((route, "-"))

    return probe


def lastn(m: Matrix, route: str) -> None:
    for who in ORGS:
        patient = _org(m, 3 - m.world.orgs[who].world, "provider").patient
        answer = m.ask(who, "GET", "/fhir/Observation/$lastn", params={"patient": patient})
        assert answer.status_code in (200, 403), answer.text
        m.clean(route, who, answer, named=patient)


def paging(m: Matrix, route: str) -> None:
    """The owner's next link, replayed by the other world, tampered with, or reused under
    other criteria: refused (400), never the owner's page."""
    for n, owner in ((1, "A"), (2, "B")):
        first = _owner_read(m, owner, "/fhir/Observation?_count=1")
        links = {link["relation"]: link["url"] for link in first["link"]}
        next_url = links["next"].split("/fhir", 1)[1]
        assert m.ask(owner, "GET", "/fhir" + next_url).status_code == 200
        for who in [*others(m.world, n), "P" if n == 1 else "Q"]:
            answer = m.ask(who, "GET", "/fhir" + next_url)
            assert answer.status_code == 400, (who, answer.text)
            m.clean(route + " next link", who, answer)
        cursor = re.search(r"_cursor=([^&]+)", next_url)
        assert cursor
        payload, _, signature = cursor.group(1).partition(".")
        flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + signature
        tampered = next_url.replace(cursor.group(1), flipped)
        assert m.ask(owner, "GET", "/fhir" + tampered).status_code == 400
        assert m.ask(owner, "GET", "/fhir" + next_url + "&code=8867-4").status_code == 400


def kick_off(m: Matrix, who: str, path: str) -> str:
    answer = m.ask(who, "GET", path, headers={"Prefer": "respond-async"})
    assert answer.status_code == 202, answer.text
    return answer.headers["Content-Location"].split("/fhir", 1)[1]


def exports(m: Matrix, route: str) -> None:
    """P's export of its Group and of its patients: every other organisation is refused the
    kick-off in P's name, its status, its files and its cancellation; P's files hold
    nothing of world 2."""
    p = m.world.orgs["P"]
    for path in (f"/fhir/Group/{p.id}/$export", "/fhir/Patient/$export"):
        status_url = "/fhir" + kick_off(m, "P", path)
        deadline = time.monotonic() + WAIT_S
        while (done := m.ask("P", "GET", status_url)).status_code == 202:
            assert time.monotonic() < deadline, "P's export did not finish"
            time.sleep(0.1)
        assert done.status_code == 200, done.text
        files = ["/fhir" + item["url"].split("/fhir", 1)[1] for item in done.json()["output"]]
        assert files, done.text
        for who in ("A", "B", "Q"):
            m.denied(
                "GET /fhir/$export-poll-status/{job_id}",
                who,
                m.ask(who, "GET", status_url),
                named=status_url,
            )
            for file in files:
                m.denied(
                    "GET /fhir/$export-file/{job_id}/{name}",
                    who,
                    m.ask(who, "GET", file),
                    named=file,
                )
            m.denied(
                "DELETE /fhir/$export-poll-status/{job_id}",
                who,
                m.ask(who, "DELETE", status_url),
                named=status_url,
            )
        for file in files:
            own = m.ask("P", "GET", file)
            assert own.status_code == 200
            m.clean("GET /fhir/$export-file/{job_id}/{name}", "P", own)
    for who in ("A", "B", "Q"):
        m.denied(
            "GET /fhir/Group/{group_id}/$export",
            who,
            m.ask(who, "GET", f"/fhir/Group/{p.id}/$export", headers={"Prefer": "respond-async"}),
            named=p.id,
        )
    for who in ORGS:
        m.denied(
            "GET /fhir/$export",
            who,
            m.ask(who, "GET", "/fhir/$export", headers={"Prefer": "respond-async"}),
        )


def bundle_for_foreign_device(m: Matrix, route: str) -> None:
    """A start-up delivering readings for the other world's device: nothing stored."""
    for who in ORGS:
        device = foreign_of("device")(m.world, who)
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "identifier": [{"system": READING_SEQ_SYSTEM, "value": "900"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectiveDateTime": "2026-01-05T10:00:00+01:00",
            "valueQuantity": {
                "value": 70,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
            "device": {"reference": f"Device/{device}"},
        }
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": observation, "request": {"method": "POST", "url": "Observation"}}
            ],
        }
        answer = m.ask(
            who,
            "POST",
            "/fhir",
            content=orjson.dumps(bundle),
            headers={"Content-Type": "application/fhir+json"},
        )
        statuses = [e["response"]["status"] for e in answer.json().get("entry", [])]
        assert answer.status_code in (400, 403, 404) or not any(
            s.startswith("2") for s in statuses
        ), (who, answer.text)
        m.clean(route, who, answer, named=device)


def questionnaire_about_foreign_patient(m: Matrix, route: str) -> None:
    for who in ORGS:
        patient = foreign_of("patient")(m.world, who)
        body = {
            "resourceType": "QuestionnaireResponse",
            "questionnaire": SUS_URL,
            "status": "completed",
            "subject": {"reference": f"Patient/{patient}"},
            "authored": "2026-03-05T10:00:00+01:00",
            "item": [{"linkId": str(i), "answer": [{"valueInteger": 3}]} for i in range(1, 11)],
        }
        answer = m.ask(
            who,
            "POST",
            route.split()[1],
            content=orjson.dumps(body),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert 400 <= answer.status_code < 500, (who, answer.text)
        m.clean(route, who, answer, named=patient)


def portal_enrol(m: Matrix, route: str) -> None:
    """A provider's enrolment form naming the other world's device or patient: refused."""
    for who in ORGS:
        for body in (enrolment_body(m.world, who), foreign_patient_enrolment(m.world, who)):
            form = {k: str(v) for k, v in body["json"].items() if k not in ("end", "care_plan")}
            answer = m.portal(who, "POST", "/portal/enrolments", plan_bp_systolic="1", **form)
            assert 400 <= answer.status_code < 500, (who, answer.status_code, answer.text[:300])
            m.clean(route, who, answer, named=str(form))


def world_unchanged(m: Matrix) -> None:
    """After every refused change: each device still connects with its first password and is
    not revoked, each patient is there (not erased), each alert is open, each enrolment has
    no end."""
    for org in m.world.orgs.values():
        for device_id in org.devices.values():
            assert (
                m.ask(org.name, "GET", f"/api/v1/devices/{device_id}").json()["status"] != "revoked"
            )
            password = org.passwords[device_id]
            mqtt = m.ask(org.name, "GET", f"/api/v1/devices/{device_id}").json()
            assert mqtt["device_id"] == device_id
            address = BrokerAddress(m.broker[0], m.broker[1], device_id, password)
            MqttConnection(address, device_id).connect().close()
        if org.kind == "provider":
            assert m.ask(org.name, "GET", f"/api/v1/patients/{org.patient}").status_code == 200
            alerts = m.ask(org.name, "GET", "/api/v1/alerts?status=open").json()
            assert org.alert in {a["id"] for a in alerts}
            enrolment = m.ask(org.name, "GET", f"/api/v1/enrolments/{org.enrolment}").json()
            assert enrolment["end"] is None
