"""HTTP routes of FHIR Bulk Data export and of `POST /fhir` transaction Bundles.

`$export` follows the Bulk Data Access IG v2.0.0: a kick-off answers 202 with the status
URL in `Content-Location`; polling it answers 202 with `X-Progress` while the job runs and
200 with the manifest when it is done; the files are NDJSON (`application/fhir+ndjson`),
downloaded with the same bearer token; DELETE cancels (or, once done, discards) the export.
Who may export what:

| caller | `/fhir/$export` | `/fhir/Group/{id}/$export` | `/fhir/Patient/$export` |
|---|---|---|---|
| operator | everything | any provider's Group | every provider's patients |
| provider | 403 | its own Group only (another id: 404) | its own patients |
| start-up | 403 | 403 | 403 |

`POST /fhir` takes a transaction or batch Bundle of Observations from a start-up, for its
own devices only, and stores them as MQTT ingest would (ingest_http.py).

Every error is an OperationOutcome (`application/fhir+json`), also for a missing token.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ehealthlab.api.auth import ApiContext, ContextDep, Principal, PrincipalDep, StartupDep
from ehealthlab.errors import (
    AuthenticationError,
    ConflictError,
    EhealthlabError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from ehealthlab.fhir import audit, bulk_store
from ehealthlab.fhir.audit import AuditEntry
from ehealthlab.fhir.bulk import (
    NDJSON_MEDIA_TYPE,
    ExportLevel,
    Issue,
    UnsupportedError,
    is_file_name,
    manifest,
    operation_outcome,
    parse_kickoff,
    prefers_async,
    progress,
)
from ehealthlab.fhir.bulk_store import ExportJob
from ehealthlab.fhir.bulk_worker import ExportRunner, job_directory
from ehealthlab.fhir.ingest_http import deliver_bundle
from ehealthlab.fhir.transaction import BundleError

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
#: exports an organisation may have queued or running at once (the IG's advice: 429 beyond)
MAX_ACTIVE_EXPORTS = 2
#: seconds a client is asked to wait between status requests
RETRY_AFTER_S = 2
#: largest transaction Bundle taken, in bytes
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
_STATE_KEY = "fhir_export_runner"
#: advisory-lock name space of kick-offs ("EHLX"), apart from ingest's and migrations'
_KICK_OFF_LOCK_CLASS = 0x45484C58


class TooManyExportsError(EhealthlabError):
    """An organisation already has as many exports in progress as it may (429)."""


class FhirResponse(Response):
    """`application/fhir+json`, encoded with orjson."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


# -- errors as OperationOutcome ---------------------------------------------------------------

# Most specific first: the first class an error is an instance of decides.
_ERRORS: tuple[tuple[type[EhealthlabError], int, str], ...] = (
    (AuthenticationError, 401, "login"),
    (PermissionDeniedError, 403, "forbidden"),
    (NotFoundError, 404, "not-found"),
    (TooManyExportsError, 429, "throttled"),
    (ConflictError, 409, "conflict"),
    (UnsupportedError, 400, "not-supported"),
    (InvalidInputError, 400, "invalid"),
    (ServiceUnavailableError, 503, "transient"),
)


def outcome_response(
    status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None
) -> FhirResponse:
    """An error answered as a FHIR OperationOutcome."""
    body = operation_outcome(Issue("error", code, diagnostics))
    return FhirResponse(body, status_code=status, headers=headers)


def error_response(exc: EhealthlabError, request: Request) -> FhirResponse:
    """The OperationOutcome of one of the platform's errors (never echoing the input)."""
    if isinstance(exc, BundleError):
        return outcome_response(413 if exc.too_large else 400, exc.code, str(exc))
    for cls, status, code in _ERRORS:
        if isinstance(exc, cls):
            headers = None
            if status == 401:
                headers = {"WWW-Authenticate": 'Bearer realm="ehealthlab"'}
            elif status in (429, 503):
                headers = {"Retry-After": str(RETRY_AFTER_S if status == 429 else 5)}
            return outcome_response(status, code, str(exc), headers)
    log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    return outcome_response(
        500, "exception", "the server could not complete the request; the operator has the details"
    )


class FhirRoute(APIRoute):
    """A route whose errors, its dependencies' included (a missing token), are answered as
    OperationOutcome, as FHIR clients expect, instead of the API's problem details."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except EhealthlabError as exc:
                return error_response(exc, request)
            except RequestValidationError as exc:
                fields = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
                )
                return outcome_response(400, "invalid", f"invalid request: {fields}")
            except StarletteHTTPException as exc:
                return outcome_response(exc.status_code, "processing", str(exc.detail))

        return fhir_handler


# -- the export runner, for the application's lifetime -------------------------------------


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Start the export runner with the application (after create_app's own start-up,
    which this router's lifespan follows), and stop it first."""
    context = getattr(app.state, "context", None)
    if not isinstance(context, ApiContext):
        yield {}
        return
    runner = ExportRunner(context.settings)
    runner.start()
    try:
        yield {_STATE_KEY: runner}
    finally:
        await run_in_threadpool(runner.close)


router = APIRouter(
    prefix="/fhir", route_class=FhirRoute, lifespan=_lifespan, tags=["FHIR bulk data"]
)


def _runner(request: Request) -> ExportRunner:
    runner = getattr(request.state, _STATE_KEY, None)
    if not isinstance(runner, ExportRunner):
        raise ServiceUnavailableError("bulk export is not running in this server")
    return runner


# -- kick-off -----------------------------------------------------------------------------------

PreferHeader = Annotated[str | None, Header(description="respond-async (the default)")]


@router.get(
    "/$export",
    summary="Kick off a system-level export (operator)",
    description="Every Organization, Location, Device, Patient and Observation (unassigned "
    "readings included). Parameters: `_type`, `_since`, `_outputFormat`.",
    status_code=202,
    response_class=FhirResponse,
)
def export_system(
    request: Request, caller: PrincipalDep, context: ContextDep, prefer: PreferHeader = None
) -> Response:
    if caller.kind != "operator":
        raise PermissionDeniedError(
            "the system-level export is the operator's; a health provider exports its own "
            "patients with GET /fhir/Group/{its organisation id}/$export"
        )
    return _kick_off(request, caller, context, "system", None, prefer=prefer)


@router.get(
    "/Patient/$export",
    summary="Kick off a patient-level export (provider: its patients; operator: all)",
    status_code=202,
    response_class=FhirResponse,
)
def export_patients(
    request: Request, caller: PrincipalDep, context: ContextDep, prefer: PreferHeader = None
) -> Response:
    _refuse_startups(caller)
    provider = caller.organisation_id if caller.kind == "provider" else None
    return _kick_off(request, caller, context, "patient", provider, prefer=prefer)


@router.get(
    "/Group/{group_id}/$export",
    summary="Kick off a Group export: a provider's patients (the Group id is the provider's)",
    status_code=202,
    response_class=FhirResponse,
)
def export_group(
    group_id: str,
    request: Request,
    caller: PrincipalDep,
    context: ContextDep,
    prefer: PreferHeader = None,
) -> Response:
    _refuse_startups(caller)
    provider = _uuid(group_id, "Group")
    if caller.kind == "provider" and provider != caller.organisation_id:
        raise NotFoundError(f"no Group {group_id} among yours")
    with context.transaction() as conn:
        if not bulk_store.provider_exists(conn, provider):
            raise NotFoundError(f"no Group {group_id}")
    return _kick_off(request, caller, context, "group", provider, prefer=prefer)


def _refuse_startups(caller: Principal) -> None:
    if caller.kind == "startup":
        raise PermissionDeniedError(
            "bulk export is for health providers and the operator; a start-up reads what its "
            "devices sent with search"
        )


def _uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotFoundError(f"no {what} {value[:64]!r}") from None


def _kick_off(
    request: Request,
    caller: Principal,
    context: ApiContext,
    level: ExportLevel,
    provider_id: UUID | None,
    *,
    prefer: str | None,
) -> Response:
    if not prefers_async(prefer):
        raise UnsupportedError("$export runs asynchronously only: send 'Prefer: respond-async'")
    asked = parse_kickoff(
        level,
        request.query_params.multi_items(),
        prefer=prefer,
        group_id=provider_id if level == "group" else None,
    )
    runner = _runner(request)
    with context.transaction() as conn:
        # one at a time per organisation: two kick-offs at once must not both pass the count
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            (_KICK_OFF_LOCK_CLASS, str(caller.organisation_id)),
        )
        if bulk_store.active_jobs(conn, caller.organisation_id) >= MAX_ACTIVE_EXPORTS:
            raise TooManyExportsError(
                f"{MAX_ACTIVE_EXPORTS} exports of yours are already in progress; wait for one "
                "to finish, or cancel one (DELETE its status URL)"
            )
        job = bulk_store.create_job(
            conn, caller.organisation_id, asked, provider_id, str(request.url)
        )
        audit.record(conn, AuditEntry(
            caller.organisation_id, caller.token_id, "operation",
            {"system": "system", "group": "Group", "patient": "Patient"}[level],
            202, resource_id=str(provider_id) if provider_id else None, operation="export",
            query=request.url.query, detail=f"export {job.id} started",
        ))  # fmt: skip
    runner.submit(job.id)
    status_url = str(request.url_for("export_status", job_id=str(job.id)))
    accepted = operation_outcome(
        Issue("information", "informational", f"export accepted; poll {status_url}")
    )
    return FhirResponse(accepted, status_code=202, headers={"Content-Location": status_url})


# -- status, cancel, files --------------------------------------------------------------------


def _visible_job(context: ApiContext, caller: Principal, job_id: str) -> ExportJob:
    """The caller's export, if it exists and was not cancelled or discarded."""
    with context.transaction() as conn:
        job = bulk_store.get_job(conn, _uuid(job_id, "export"), caller.organisation_id)
    if job is None or job.status == "cancelled":
        raise NotFoundError(f"no export {job_id} (never started, someone else's, or cancelled)")
    expired = job.expires_at is not None and job.expires_at < datetime.now(UTC)
    if job.status == "completed" and expired:
        raise NotFoundError(f"export {job_id} expired; its files are gone")
    return job


@router.get(
    "/$export-poll-status/{job_id}",
    name="export_status",
    summary="An export's status: 202 while it runs, 200 with the manifest when done",
    response_class=FhirResponse,
)
def export_status(
    job_id: str, request: Request, caller: PrincipalDep, context: ContextDep
) -> Response:
    job = _visible_job(context, caller, job_id)
    if job.status in ("queued", "running"):
        return Response(
            status_code=202,
            headers={
                "X-Progress": progress(job.status, job.written),
                "Retry-After": str(RETRY_AFTER_S),
            },
        )
    if job.status == "failed" or job.transaction_time is None:
        return outcome_response(500, "exception", job.error or "the export failed")

    def file_url(name: str) -> str:
        return str(request.url_for("export_file", job_id=job_id, name=name))

    body = manifest(
        transaction_time=job.transaction_time,
        request_url=job.request_url,
        files=job.export_files,
        file_url=file_url,
    )
    headers = {}
    if job.expires_at is not None:
        headers["Expires"] = format_datetime(job.expires_at.astimezone(UTC), usegmt=True)
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


@router.delete(
    "/$export-poll-status/{job_id}",
    summary="Cancel an export, or discard its files once done",
    status_code=202,
    response_class=FhirResponse,
)
def cancel_export(job_id: str, caller: PrincipalDep, context: ContextDep) -> Response:
    job = _visible_job(context, caller, job_id)
    with context.transaction() as conn:
        if not bulk_store.cancel_job(conn, job.id, caller.organisation_id):
            raise NotFoundError(f"no export {job_id}")
    if job.status == "completed":  # a running job deletes its own files when it stops
        shutil.rmtree(job_directory(context.settings, job.id), ignore_errors=True)
    cancelled = operation_outcome(Issue("information", "informational", "export cancelled"))
    return FhirResponse(cancelled, status_code=202)


@router.get(
    "/$export-file/{job_id}/{name}",
    name="export_file",
    summary="One NDJSON file of a completed export",
    response_class=FileResponse,
)
def export_file(job_id: str, name: str, caller: PrincipalDep, context: ContextDep) -> Response:
    job = _visible_job(context, caller, job_id)
    listed = {item.name for item in job.export_files}
    if job.status != "completed" or not is_file_name(name) or name not in listed:
        raise NotFoundError(f"no file {name[:64]!r} in export {job_id}")
    path = job_directory(context.settings, job.id) / name
    if not path.is_file():
        raise NotFoundError(f"file {name} of export {job_id} is gone")
    with context.transaction() as conn:  # the data leave now: that is the read to record
        audit.record(conn, AuditEntry(
            caller.organisation_id, caller.token_id, "operation", name.partition(".")[0], 200,
            operation="export", detail=f"file {name} of export {job.id} downloaded",
        ))  # fmt: skip
    return FileResponse(path, media_type=NDJSON_MEDIA_TYPE, content_disposition_type="inline")


# -- transaction Bundles ----------------------------------------------------------------------

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
