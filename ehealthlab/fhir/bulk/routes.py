"""HTTP routes of FHIR Bulk Data export.

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

Every error is an OperationOutcome (`application/fhir+json`), also for a missing token
(FhirRoute, outcome_route.py).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.auth import ApiContext, ContextDep, Principal, PrincipalDep
from ehealthlab.errors import NotFoundError, PermissionDeniedError, ServiceUnavailableError
from ehealthlab.fhir import audit
from ehealthlab.fhir.audit import AuditEntry
from ehealthlab.fhir.bulk import store
from ehealthlab.fhir.bulk.export import (
    NDJSON_MEDIA_TYPE,
    RETRY_AFTER_S,
    ExportLevel,
    Issue,
    TooManyExportsError,
    UnsupportedError,
    is_file_name,
    manifest,
    operation_outcome,
    parse_kickoff,
    prefers_async,
    progress,
)
from ehealthlab.fhir.bulk.store import ExportJob
from ehealthlab.fhir.bulk.worker import ExportRunner, job_directory
from ehealthlab.fhir.outcome_route import FhirResponse, FhirRoute, outcome_response

#: exports an organisation may have queued or running at once (the IG's advice: 429 beyond)
MAX_ACTIVE_EXPORTS = 2
_STATE_KEY = "fhir_export_runner"
#: advisory-lock name space of kick-offs ("EHLX"), apart from ingest's and migrations'
_KICK_OFF_LOCK_CLASS = 0x45484C58


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
        if not store.provider_exists(conn, provider):
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
        if store.active_jobs(conn, caller.organisation_id) >= MAX_ACTIVE_EXPORTS:
            raise TooManyExportsError(
                f"{MAX_ACTIVE_EXPORTS} exports of yours are already in progress; wait for one "
                "to finish, or cancel one (DELETE its status URL)"
            )
        job = store.create_job(conn, caller.organisation_id, asked, provider_id, str(request.url))
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
        job = store.get_job(conn, _uuid(job_id, "export"), caller.organisation_id)
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
        if not store.cancel_job(conn, job.id, caller.organisation_id):
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
