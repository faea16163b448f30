"""The router of the FHIR R4 REST API at /fhir: capabilities, read, search and
Observation/$lastn, for the resource types listed here, and the create of SUS
QuestionnaireResponses (questionnaires/routes.py); `install(app)` mounts it with the
OperationOutcome error handlers (outcome.py).

Routes name their resource types and match only FHIR ids, so other routers under /fhir
($export, transaction Bundles) can be mounted before or after this one.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.convertors import Convertor, register_url_convertor

from ehealthlab.fhir import outcome
from ehealthlab.fhir.outcome import FhirResponse
from ehealthlab.fhir.questionnaires.routes import create_questionnaire_response
from ehealthlab.fhir.rest.interactions import (
    metadata,
    read_handler,
    search_by_post_handler,
    search_handler,
)
from ehealthlab.fhir.rest.operations import lastn
from ehealthlab.fhir.rest.runtime import lifespan

#: the resource types read and searched here (AuditEvent: the operator only)
RESOURCE_TYPES = (
    "Observation",
    "Patient",
    "Device",
    "Location",
    "Organization",
    "AuditEvent",
    "QuestionnaireResponse",
    "Measure",
    "MeasureReport",
)
#: the resource types only read here (the SUS Questionnaire, the Groups of MeasureReports)
READ_ONLY_TYPES = ("Questionnaire", "Group")


class _FhirIdConvertor(Convertor[str]):
    """A path segment that can be a FHIR id ([A-Za-z0-9-.]{1,64}): `$lastn` or `$export`
    never are, so they stay free for operation routes."""

    regex = "[A-Za-z0-9\\-.]{1,64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhirid", _FhirIdConvertor())

router = APIRouter(prefix="/fhir", tags=["fhir"], lifespan=lifespan)
router.add_api_route(
    "/metadata",
    metadata,
    methods=["GET"],
    summary="The CapabilityStatement (no token needed)",
    response_class=FhirResponse,
)
router.add_api_route(
    "/Observation/$lastn",
    lastn,
    methods=["GET"],
    summary="The most recent Observations of each code (Observation-lastn)",
    response_class=FhirResponse,
)
router.add_api_route(
    "/QuestionnaireResponse",
    create_questionnaire_response,
    methods=["POST"],
    summary="Post a System Usability Scale response (a provider's patient's, or the operator)",
    response_class=FhirResponse,
    status_code=201,
)
for _type in READ_ONLY_TYPES:
    router.add_api_route(
        f"/{_type}/{{resource_id:fhirid}}",
        read_handler(_type),
        methods=["GET"],
        summary=f"Read {_type}",
        response_class=FhirResponse,
    )
for _type in RESOURCE_TYPES:
    router.add_api_route(
        f"/{_type}",
        search_handler(_type),
        methods=["GET"],
        summary=f"Search {_type}",
        response_class=FhirResponse,
    )
    router.add_api_route(
        f"/{_type}/_search",
        search_by_post_handler(_type),
        methods=["POST"],
        summary=f"Search {_type} with a form",
        response_class=FhirResponse,
    )
    router.add_api_route(
        f"/{_type}/{{resource_id:fhirid}}",
        read_handler(_type),
        methods=["GET"],
        summary=f"Read {_type}",
        response_class=FhirResponse,
    )


def install(app: FastAPI) -> None:
    """Serve /fhir on `app`, with OperationOutcomes for its errors."""
    app.include_router(router)
    outcome.install(app)
