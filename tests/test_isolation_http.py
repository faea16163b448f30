"""The isolation matrix over HTTP: every route of the application, as every organisation of
the other world (isolation_world.py), denied or clean.

The routes are enumerated from the application itself (`iter_route_contexts`), so a new
route without an entry in ROUTES fails `test_every_route_has_a_probe` with its name. A probe
asks, as each organisation of the world that does not own the thing: an id route with the
other world's ids (403 or 404, the API's convention, never 2xx), a list or a search (no
identifier of the other world anywhere in the answer), a mutating route with the other
world's ids (refused, and the thing unchanged afterwards). Every id probe has a positive
control (the owner gets 2xx), so a denial is never a typo's 404. FHIR search parameters come
from PARAMETERS, paging links are replayed across worlds, and an export of one provider is
fetched by everyone else; the portal's pages are asked with each organisation's session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.routing import iter_route_contexts
from isolation_fhir_probes import (
    PUBLIC_SEARCHES,
    SEARCH_VALUES,
    bundle_for_foreign_device,
    exports,
    lastn,
    paging,
    portal_enrol,
    questionnaire_about_foreign_patient,
    search,
    world_unchanged,
)
from isolation_probes import (
    Matrix,
    Probe,
    both,
    by_id,
    enrolment_body,
    foreign_patient_enrolment,
    listing,
    observations,
    operator_only,
    organisations,
    provider_field,
    public,
    startup_devices,
    with_foreign,
)
from isolation_world import World, make_world

from ehealthlab.api.app import create_app
from ehealthlab.demo import LocalServices
from ehealthlab.fhir.search.parameters import PARAMETERS
from ehealthlab.settings import Settings


@pytest.fixture(scope="module")
def world(settings: Settings) -> Iterator[World]:
    with LocalServices(settings) as services:
        yield make_world(settings, services.api_url)


_COVERED = public("asked by the probe of GET /fhir/$export")
_OWN = "creates a thing of the caller's own; the body names nothing of anyone else"
_DEVICE = "/api/v1/devices/{}"
_UUID = "00000000-0000-4000-8000-000000000000"

#: every route of the application -> how it is asked as the other world
ROUTES: dict[str, Probe] = {
    "GET /openapi.json": public("the API's description: no data"),
    "GET /docs": public("Swagger UI: no data"),
    "GET /docs/oauth2-redirect": public("Swagger UI: no data"),
    "GET /redoc": public("ReDoc: no data"),
    "POST /api/v1/organisations": operator_only("POST", "/api/v1/organisations"),
    "GET /api/v1/organisations": listing("/api/v1/organisations"),
    "GET /api/v1/me": listing("/api/v1/me"),
    "POST /api/v1/devices": public(_OWN),
    "GET /api/v1/devices": listing("/api/v1/devices"),
    "GET /api/v1/devices/{device_id}": by_id("GET", _DEVICE, startup_devices),
    "POST /api/v1/devices/{device_id}/credentials": by_id(
        "POST", _DEVICE + "/credentials", startup_devices, control=False
    ),
    "DELETE /api/v1/devices/{device_id}": by_id("DELETE", _DEVICE, startup_devices, control=False),
    "GET /api/v1/devices/{device_id}/rejects": by_id("GET", _DEVICE + "/rejects", startup_devices),
    "GET /api/v1/devices/{device_id}/messages": by_id(
        "GET", _DEVICE + "/messages", startup_devices
    ),
    "GET /api/v1/devices/{device_id}/conformance": by_id(
        "GET", _DEVICE + "/conformance", startup_devices
    ),
    "POST /api/v1/patients": public(_OWN),
    "GET /api/v1/patients": listing("/api/v1/patients"),
    "GET /api/v1/patients/{patient_id}": by_id(
        "GET", "/api/v1/patients/{}", provider_field("patient")
    ),
    "POST /api/v1/patients/{patient_id}/erasure": by_id(
        "POST",
        "/api/v1/patients/{}/erasure",
        provider_field("patient"),
        control=False,
        reason="isolation probe",
    ),
    "POST /api/v1/enrolments": both(
        with_foreign("POST", "/api/v1/enrolments", enrolment_body),
        with_foreign("POST", "/api/v1/enrolments", foreign_patient_enrolment),
    ),
    "GET /api/v1/enrolments": listing("/api/v1/enrolments"),
    "GET /api/v1/enrolments/{enrolment_id}": by_id(
        "GET", "/api/v1/enrolments/{}", provider_field("enrolment")
    ),
    "POST /api/v1/enrolments/{enrolment_id}/end": by_id(
        "POST",
        "/api/v1/enrolments/{}/end",
        provider_field("enrolment"),
        control=False,
        end="2030-01-01",
    ),
    "GET /api/v1/alerts": both(listing("/api/v1/alerts"), listing("/api/v1/alerts?status=open")),
    "POST /api/v1/alerts/{alert_id}/ack": by_id(
        "POST", "/api/v1/alerts/{}/ack", provider_field("alert"), control=False
    ),
    "POST /api/v1/mini-pilots": operator_only("POST", "/api/v1/mini-pilots"),
    "GET /api/v1/mini-pilots": operator_only("GET", "/api/v1/mini-pilots"),
    "GET /api/v1/mini-pilots/{mini_pilot_id}": operator_only("GET", f"/api/v1/mini-pilots/{_UUID}"),
    "GET /api/v1/evaluation": operator_only("GET", "/api/v1/evaluation"),
    "GET /fhir/metadata": public("the CapabilityStatement: no data"),
    "GET /fhir/Observation/$lastn": lastn,
    "POST /fhir/QuestionnaireResponse": questionnaire_about_foreign_patient,
    "GET /fhir/Questionnaire/{resource_id:fhirid}": public("the SUS Questionnaire, published"),
    "GET /fhir/Group/{resource_id:fhirid}": public("the published Groups of MeasureReports"),
    "GET /fhir/Observation": both(search("Observation"), paging),
    "POST /fhir/Observation/_search": search("Observation", by_post=True),
    "GET /fhir/Observation/{resource_id:fhirid}": by_id(
        "GET", "/fhir/Observation/{}", observations
    ),
    "GET /fhir/Patient": search("Patient"),
    "POST /fhir/Patient/_search": search("Patient", by_post=True),
    "GET /fhir/Patient/{resource_id:fhirid}": by_id(
        "GET", "/fhir/Patient/{}", provider_field("patient")
    ),
    "GET /fhir/Device": search("Device"),
    "POST /fhir/Device/_search": search("Device", by_post=True),
    "GET /fhir/Device/{resource_id:fhirid}": by_id("GET", "/fhir/Device/{}", startup_devices),
    "GET /fhir/Location": public(PUBLIC_SEARCHES["Location"]),
    "POST /fhir/Location/_search": public(PUBLIC_SEARCHES["Location"]),
    "GET /fhir/Location/{resource_id:fhirid}": public(PUBLIC_SEARCHES["Location"]),
    "GET /fhir/Organization": search("Organization"),
    "POST /fhir/Organization/_search": search("Organization", by_post=True),
    "GET /fhir/Organization/{resource_id:fhirid}": by_id(
        "GET", "/fhir/Organization/{}", organisations
    ),
    "GET /fhir/AuditEvent": search("AuditEvent"),
    "POST /fhir/AuditEvent/_search": search("AuditEvent", by_post=True),
    "GET /fhir/AuditEvent/{resource_id:fhirid}": operator_only("GET", f"/fhir/AuditEvent/{_UUID}"),
    "GET /fhir/QuestionnaireResponse": search("QuestionnaireResponse"),
    "POST /fhir/QuestionnaireResponse/_search": search("QuestionnaireResponse", by_post=True),
    "GET /fhir/QuestionnaireResponse/{resource_id:fhirid}": by_id(
        "GET", "/fhir/QuestionnaireResponse/{}", provider_field("questionnaire_response")
    ),
    "GET /fhir/Measure": public(PUBLIC_SEARCHES["Measure"]),
    "POST /fhir/Measure/_search": public(PUBLIC_SEARCHES["Measure"]),
    "GET /fhir/Measure/{resource_id:fhirid}": public(PUBLIC_SEARCHES["Measure"]),
    "GET /fhir/MeasureReport": search("MeasureReport"),
    "POST /fhir/MeasureReport/_search": search("MeasureReport", by_post=True),
    "GET /fhir/MeasureReport/{resource_id:fhirid}": public(
        "published reports, small groups suppressed; none in this world (searched above)"
    ),
    "GET /fhir/$export": exports,
    "GET /fhir/Patient/$export": _COVERED,
    "GET /fhir/Group/{group_id}/$export": _COVERED,
    "GET /fhir/$export-poll-status/{job_id}": _COVERED,
    "DELETE /fhir/$export-poll-status/{job_id}": _COVERED,
    "GET /fhir/$export-file/{job_id}/{name}": _COVERED,
    "POST /fhir": bundle_for_foreign_device,
    "GET /portal/login": public("the login form"),
    "POST /portal/login": public("exchanges the caller's own token (test_credentials_limit.py)"),
    "POST /portal/logout": public("ends the caller's own session"),
    "GET /portal/": listing("/portal/", portal=True),
    "GET /portal": listing("/portal", portal=True),
    "GET /portal/static/portal.css": public("the style sheet"),
    "GET /portal/static/favicon.svg": public("the icon"),
    "GET /portal/devices": listing("/portal/devices", portal=True),
    "POST /portal/devices": public(_OWN),
    "GET /portal/devices/{device_id}": by_id(
        "GET", "/portal/devices/{}", startup_devices, portal=True
    ),
    "POST /portal/devices/{device_id}/rotate": by_id(
        "POST", "/portal/devices/{}/rotate", startup_devices, control=False, portal=True
    ),
    "POST /portal/devices/{device_id}/revoke": by_id(
        "POST", "/portal/devices/{}/revoke", startup_devices, control=False, portal=True
    ),
    "GET /portal/patients": listing("/portal/patients", portal=True),
    "POST /portal/patients": public(_OWN),
    "POST /portal/enrolments": portal_enrol,
    "POST /portal/enrolments/{enrolment_id}/end": by_id(
        "POST",
        "/portal/enrolments/{}/end",
        provider_field("enrolment"),
        control=False,
        portal=True,
    ),
    "POST /portal/alerts/{alert_id}/ack": by_id(
        "POST", "/portal/alerts/{}/ack", provider_field("alert"), control=False, portal=True
    ),
    "GET /portal/organisations": operator_only("GET", "/portal/organisations", portal=True),
    "POST /portal/organisations": operator_only("POST", "/portal/organisations", portal=True),
    "GET /portal/mini-pilots": operator_only("GET", "/portal/mini-pilots", portal=True),
    "POST /portal/mini-pilots": operator_only("POST", "/portal/mini-pilots", portal=True),
    "GET /portal/report": operator_only("GET", "/portal/report", portal=True),
    "GET /portal/report/view": operator_only("GET", "/portal/report/view", portal=True),
    "GET /portal/{rest:path}": public("404 for any other path"),
    "POST /portal/{rest:path}": public("404 for any other path"),
}


def application_routes(settings: Settings) -> set[str]:
    """`METHOD path` of every route the application serves (HEAD aside)."""
    return {
        f"{method} {route.path}"
        for route in iter_route_contexts(create_app(settings).routes)
        for method in (route.methods or ())
        if method != "HEAD"
    }


def test_every_route_has_a_probe(settings):
    served = application_routes(settings)
    assert len(served) > 80  # the enumeration itself works
    missing = sorted(served - ROUTES.keys())
    assert not missing, f"routes with no isolation probe: {missing}"
    assert not sorted(ROUTES.keys() - served), "probes of routes that no longer exist"


def test_every_search_parameter_has_a_value():
    missing = [
        (t, p.name)
        for t, params in PARAMETERS.items()
        if t not in PUBLIC_SEARCHES
        for p in params
        if (t, p.name) not in SEARCH_VALUES
    ]
    assert not missing, f"FHIR search parameters with no isolation value: {missing}"


def test_every_route_as_the_other_world(world, mosquitto_broker, record_property):
    matrix = Matrix(world)
    matrix.broker = (mosquitto_broker.host, mosquitto_broker.port)
    try:
        for route, probe in ROUTES.items():
            probe(matrix, route)
        world_unchanged(matrix)
    finally:
        matrix.close()
    asked = {pair for pair in matrix.pairs if pair[1] != "-"}
    record_property("route_organisation_pairs", len(asked))
    print(
        f"isolation matrix: {len(ROUTES)} routes, {len(asked)} (route or search parameter, "
        f"organisation) pairs, {matrix.requests} requests"
    )
