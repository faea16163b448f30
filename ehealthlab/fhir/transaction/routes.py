"""The HTTP route of transaction Bundles: `POST /fhir` takes a transaction or batch Bundle of
Observations from a start-up, for its own devices only, and stores them as MQTT ingest
would (delivery.py).

Every error is an OperationOutcome (`application/fhir+json`), also for a missing token
(FhirRoute, outcome_route.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.auth import ContextDep, StartupDep
from ehealthlab.fhir.outcome_route import FHIR_JSON, FhirResponse, FhirRoute, outcome_response
from ehealthlab.fhir.transaction.bundle import BundleError
from ehealthlab.fhir.transaction.delivery import deliver_bundle

#: largest transaction Bundle taken, in bytes
MAX_BUNDLE_BYTES = 4 * 1024 * 1024

# tagged as $export is: docs/fhir-bulk.md and the OpenAPI document describe them together
router = APIRouter(prefix="/fhir", route_class=FhirRoute, tags=["FHIR bulk data"])

_BUNDLE_MEDIA_TYPES = frozenset({FHIR_JSON, "application/json"})


@router.post(
    "",
    summary="Deliver readings as a transaction or batch Bundle of Observations (start-up)",
    description="Each Observation of one of the caller's devices is validated, deduplicated, "
    "attributed and alerted on exactly as the same reading sent over MQTT; the response "
    "Bundle gives each entry's status, and an OperationOutcome for every rejected reading "
    "(which is kept as a dead letter, visible in /api/v1/devices/{id}/rejects).",
    response_class=FhirResponse,
)
async def post_bundle(request: Request, caller: StartupDep, context: ContextDep) -> Response:
    media_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
    if media_type not in _BUNDLE_MEDIA_TYPES:
        return outcome_response(
            415, "not-supported", f"send the Bundle as {FHIR_JSON}, not {media_type[:64]}"
        )
    body = await _read_body(request, MAX_BUNDLE_BYTES)
    answer = await run_in_threadpool(
        deliver_bundle, context.pool, caller.organisation_id, body, context.alert_rules
    )
    return FhirResponse(answer)


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = BundleError(
        f"the Bundle is larger than {limit // (1024 * 1024)} MiB: send fewer entries per request",
        code="too-costly",
        too_large=True,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
