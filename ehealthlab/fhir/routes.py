"""The FHIR R4 REST API at /fhir: capabilities, read, search and Observation/$lastn.

Handlers stay thin: check the token's scopes (access), parse the query (search/query.py), run the
SQL (search/) confined to the caller's tenant, build the JSON with fast.py and answer orjson
bytes as `application/fhir+json` — never FastAPI's JSON encoder, which costs more than the
query. `install(app)` mounts the router and the OperationOutcome error handlers.

What makes a request cheap (docs/fhir.md, "Performance"): handlers and their dependencies
are coroutines, so a request never waits for the thread pool; a token verified recently is
trusted without the database (CachedPrincipalDep); the SQL goes over connections of the
router's own asynchronous pool, all of a request's statements in one round trip
(sql.run); and reads of patient data are audited by an AuditWriter, off the request
path. The router's lifespan opens the pool and runs the writer while the application runs.

Routes name their resource types and match only FHIR ids, so other routers under /fhir
($export, transaction Bundles) can be mounted before or after this one.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

import psycopg
from fastapi import APIRouter, FastAPI, Request, Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from ehealthlab.api.auth import ApiContext, AsyncContextDep, CachedPrincipalDep, Principal
from ehealthlab.errors import (
    EhealthlabError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
)
from ehealthlab.fhir import access, audit, outcome
from ehealthlab.fhir.access import PATIENT_DATA, Tenant
from ehealthlab.fhir.audit import AuditEntry, AuditWriter, Interaction
from ehealthlab.fhir.capability import capability_statement
from ehealthlab.fhir.mapping import fast
from ehealthlab.fhir.mapping.ids import parse_observation_id
from ehealthlab.fhir.mapping.rows import BloodPressureReadings, PatientRecord
from ehealthlab.fhir.outcome import FhirResponse
from ehealthlab.fhir.search import observations, sql, tables
from ehealthlab.fhir.search.cursors import (
    Cursor,
    CursorKey,
    decode_cursor,
    encode_cursor,
    fingerprint,
)
from ehealthlab.fhir.search.observations import ObservationSource
from ehealthlab.fhir.search.parameters import SORTS
from ehealthlab.fhir.search.query import (
    SearchQuery,
    check_format,
    parse_lastn,
    parse_search,
    strict_handling,
)
from ehealthlab.fhir.search.sql import AsyncConnection, Page, Statement

log = logging.getLogger(__name__)

Json = dict[str, Any]
T = TypeVar("T")

#: the resource types read and searched here (AuditEvent: the operator only)
RESOURCE_TYPES = ("Observation", "Patient", "Device", "Location", "Organization", "AuditEvent")
#: connections of the router's own pool (each worker process has one)
POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 8
#: seconds a request waits for a connection before it is answered 503
POOL_TIMEOUT = 10.0
#: a page with more entries is turned into JSON in the thread pool, not in the event loop
RENDER_IN_THREAD_FROM = 100
#: allocations between two young-generation collections (Python's default: 700)
GC_YOUNG_THRESHOLD = 10_000
#: patient data must not linger in shared caches
_NO_STORE = {"Cache-Control": "no-store"}
_MATCH = {"mode": "match"}

_TO_JSON: dict[str, Callable[[Any], Json]] = {
    "Patient": fast.patient_json,
    "Device": fast.device_json,
    "Location": fast.location_json,
    "Organization": fast.organization_json,
    "AuditEvent": audit.audit_event_json,
}


class _FhirIdConvertor(Convertor[str]):
    """A path segment that can be a FHIR id ([A-Za-z0-9-.]{1,64}): `$lastn` or `$export`
    never are, so they stay free for operation routes."""

    regex = "[A-Za-z0-9\\-.]{1,64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhirid", _FhirIdConvertor())


@dataclass(frozen=True, slots=True)
class FhirResources:
    """What the router opens for itself while the application runs."""

    pool: AsyncConnectionPool[AsyncConnection]
    audit: AuditWriter


@asynccontextmanager
async def _resources(app: FastAPI) -> AsyncIterator[None]:
    """Open the pool and start the audit writer once the application's own pool is open
    (this lifespan nests in the application's); drain the writer before that pool closes."""
    context = getattr(app.state, "context", None)
    app.state.fhir = None
    if not isinstance(context, ApiContext):
        yield
        return
    pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
        context.settings.require_database_url(),
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        timeout=POOL_TIMEOUT,
        # UTC: times come as fast.py writes them, with nothing to convert
        kwargs={"autocommit": True, "options": f"{sql.GENERIC_PLANS} -c TimeZone=UTC"},
        open=False,
        name="ehl-fhir",
    )
    await pool.open()
    _tune_garbage_collector()
    writer = AuditWriter(context.pool).start()
    app.state.fhir = FhirResources(pool, writer)
    try:
        yield
    finally:
        app.state.fhir = None
        await run_in_threadpool(writer.close)
        await pool.close()


router = APIRouter(prefix="/fhir", tags=["fhir"], lifespan=_resources)
_gc_tuned = False


def _tune_garbage_collector() -> None:
    """Once per process, when the application has started: leave what it has loaded so far
    (about 100,000 objects: FastAPI, pydantic, fhir.resources) out of every future
    collection, and collect the young generation less often.

    A page of 1,000 Observations allocates some 30,000 objects, most of them alive until
    its bytes are written; with Python's defaults they trigger a full collection every
    few such pages, each walking everything the process ever loaded: 60 ms, the p95 of the
    request. Frozen and with a larger threshold, the p95 of such a page is 19 ms.
    """
    global _gc_tuned  # noqa: PLW0603 - a process-wide setting, made once
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def install(app: FastAPI) -> None:
    """Serve /fhir on `app`, with OperationOutcomes for its errors."""
    app.include_router(router)
    outcome.install(app)


def _resources_of(request: Request) -> FhirResources:
    resources = getattr(request.app.state, "fhir", None)
    if not isinstance(resources, FhirResources):  # an application built without create_app
        raise ServiceUnavailableError("the API is not started")
    return resources


async def _run(resources: FhirResources, *statements: Statement[Any]) -> list[Any]:
    """The statements' results. Connections are not checked when taken from the pool (a
    round trip per request); when one fails, the pool checks the others, dropping those the
    server closed (a restart), and the request runs once more. A database that cannot be
    reached is a 503."""
    for attempt in (1, 2):
        try:
            async with resources.pool.connection() as conn:
                return await sql.run(conn, statements)
        except PoolTimeout as exc:
            raise ServiceUnavailableError("the database is busy; try again") from exc
        except psycopg.OperationalError as exc:
            if attempt == 1:
                log.warning("a database connection failed (%s); checking the others", exc)
                await resources.pool.check()
                continue
            message = (str(exc).strip().splitlines() or ["no answer"])[0]
            raise ServiceUnavailableError(f"the database is unavailable ({message})") from exc
    raise AssertionError("unreachable")


async def _one(resources: FhirResources, statement: Statement[T]) -> T:
    [result] = await _run(resources, statement)
    return result  # type: ignore[no-any-return]


def base_url(request: Request) -> str:
    """The FHIR base of this server as the client reached it (links and fullUrls)."""
    scope = request.scope
    server = scope.get("server")
    key = (
        scope.get("scheme"),
        request.headers.get("host"),
        scope.get("app_root_path", scope.get("root_path", "")),
        None if server is None else tuple(server),
    )
    base = _BASES.get(key)
    if base is None:
        base = str(request.base_url).rstrip("/") + outcome.FHIR_PREFIX
        if len(_BASES) < _MAX_BASES:  # bounded: the Host header is the client's
            _BASES[key] = base
    return base


#: the bases requests were answered with, by what Starlette builds them from
_BASES: dict[tuple[Any, ...], str] = {}
_MAX_BASES = 16


@cache
def _cursor_secret(patient_key: bytes) -> bytes:
    """The key that signs paging cursors, derived from the platform's secret."""
    return hmac.new(patient_key, b"ehealthlab fhir paging cursor", hashlib.sha256).digest()


def _caller(tenant: Tenant) -> str:
    return f"{tenant.kind}:{tenant.organisation_id}"


# -- capabilities -----------------------------------------------------------------------------


@lru_cache(maxsize=8)  # bounded: the base comes from the request's Host header
def _capability_bytes(base: str) -> bytes:
    return fast.dumps(capability_statement(base))


@router.get(
    "/metadata",
    summary="The CapabilityStatement (no token needed)",
    response_class=FhirResponse,
)
async def metadata(request: Request) -> Response:
    check_format(request.query_params.multi_items())
    return FhirResponse(_capability_bytes(base_url(request)))


# -- auditing ---------------------------------------------------------------------------------


class _Audit:
    """What a request will record, if it reads patient data; failures are recorded too."""

    def __init__(
        self,
        request: Request,
        caller: Principal,
        resource_type: str,
        interaction: Interaction,
        *,
        resource_id: str | None = None,
        operation: str | None = None,
    ) -> None:
        self.enabled = resource_type in PATIENT_DATA
        resources = getattr(request.app.state, "fhir", None)
        self.writer = resources.audit if isinstance(resources, FhirResources) else None
        self.recorded = datetime.now(UTC)
        self.caller = caller
        self.resource_type = resource_type
        self.interaction: Interaction = interaction
        self.resource_id = resource_id
        self.operation = operation
        #: the search's parameters (as received, then as understood): AuditEntry.query
        self.query: Sequence[tuple[str, str]] | None = None
        self.patients: set[UUID] = set()

    def entry(self, status: int, detail: str, results: int | None = None) -> AuditEntry:
        return AuditEntry(
            organisation_id=self.caller.organisation_id,
            token_id=self.caller.token_id,
            interaction=self.interaction,
            resource_type=self.resource_type,
            http_status=status,
            resource_id=self.resource_id,
            operation=self.operation,
            query=None if self.query is None else urlencode(self.query),
            patient_ids=tuple(self.patients),
            detail=detail,
            results=results,
            recorded=self.recorded,
        )

    async def _record(self, entry: AuditEntry) -> None:
        if self.writer is not None and not self.writer.submit(entry):
            await run_in_threadpool(self.writer.write, entry)  # the queue is full

    async def success(self, results: int | None) -> None:
        if self.enabled:
            await self._record(self.entry(200, "", results))

    async def failure(self, exc: EhealthlabError) -> None:
        """Record a refused or failed request."""
        if not self.enabled:
            return
        status, _ = outcome.status_of(exc)
        try:
            await self._record(self.entry(status, str(exc)[:500]))
        except (OSError, psycopg.Error):
            log.exception("could not record the audit event of a failed %s", self.interaction)


async def _written_trail(resources: FhirResources) -> None:
    """Before the operator reads the trail: every event queued so far is written."""
    if not await run_in_threadpool(resources.audit.flush):
        log.warning("reading the audit trail before its last events are written")


def _patients_of(sources: Iterable[ObservationSource]) -> set[UUID]:
    patients = set()
    for source in sources:
        reading = source.principal if isinstance(source, BloodPressureReadings) else source
        if reading.patient_id is not None:
            patients.add(reading.patient_id)
    return patients


def _named_patients(query_clauses: Iterable[Any], names: tuple[str, ...]) -> set[UUID]:
    return {
        value
        for clause in query_clauses
        if clause.name in names
        for value in clause.values
        if isinstance(value, UUID)
    }


# -- read ---------------------------------------------------------------------------------------


def _read(resource_type: str) -> Callable[..., Awaitable[Response]]:
    async def read(
        resource_id: str, request: Request, caller: CachedPrincipalDep, context: AsyncContextDep
    ) -> Response:
        trail = _Audit(request, caller, resource_type, "read", resource_id=resource_id)
        try:
            access.require(caller.kind, resource_type, "read")
            check_format(request.query_params.multi_items())
            resources = _resources_of(request)
            if resource_type == "AuditEvent":
                await _written_trail(resources)
            body = await _read_json(resources, caller, resource_type, resource_id, trail)
        except EhealthlabError as exc:
            await trail.failure(exc)
            raise
        return FhirResponse(body, headers=_NO_STORE)

    read.__name__ = f"read_{resource_type.lower()}"
    return read


async def _read_json(
    resources: FhirResources,
    caller: Principal,
    resource_type: str,
    resource_id: str,
    trail: _Audit,
) -> bytes:
    tenant = Tenant(caller.kind, caller.organisation_id)
    missing = NotFoundError(f"no {resource_type}/{resource_id} here")
    if resource_type == "Observation":
        try:
            key = parse_observation_id(resource_id)
        except InvalidInputError:
            raise missing from None
        source = await _one(resources, observations.read_observation(key, tenant))
        if source is None:
            raise missing
        trail.patients = _patients_of([source])
        resource = fast.observation_json(source)
    else:
        record = await _one(resources, tables.read(resource_type, resource_id, tenant))
        if record is None:
            raise missing
        if isinstance(record, PatientRecord):
            trail.patients = {record.id}
        resource = _TO_JSON[resource_type](record)
    await trail.success(1)
    return fast.dumps(resource)


# -- search -----------------------------------------------------------------------------------


def _search(resource_type: str) -> Callable[..., Awaitable[Response]]:
    async def search(
        request: Request, caller: CachedPrincipalDep, context: AsyncContextDep
    ) -> Response:
        items = request.query_params.multi_items()
        return await search_response(items, request, caller, context, resource_type)

    search.__name__ = f"search_{resource_type.lower()}"
    return search


def _search_by_post(resource_type: str) -> Callable[..., Awaitable[Response]]:
    """POST [type]/_search: the parameters in a form body (and the query string), which
    FHIR servers accept as well as GET; paging links are GET links."""

    async def search_by_post(
        request: Request, caller: CachedPrincipalDep, context: AsyncContextDep
    ) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/x-www-form-urlencoded":
            raise InvalidInputError(
                "POST _search takes its parameters as application/x-www-form-urlencoded"
            )
        try:
            form = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise InvalidInputError("the form is not UTF-8") from None
        items = [*request.query_params.multi_items(), *form]
        return await search_response(items, request, caller, context, resource_type)

    search_by_post.__name__ = f"search_{resource_type.lower()}_by_post"
    return search_by_post


async def search_response(
    items: list[tuple[str, str]],
    request: Request,
    caller: Principal,
    context: ApiContext,
    resource_type: str,
    *,
    observation_json: Callable[[ObservationSource], Json] = fast.observation_json,
) -> Response:
    """A search's Bundle. `observation_json` renders Observations (bench/fhir_api.py
    compares fast.py with validated models through it)."""
    trail = _Audit(request, caller, resource_type, "search-type")
    try:
        access.require(caller.kind, resource_type, "search")
        resources = _resources_of(request)
        if resource_type == "AuditEvent":
            await _written_trail(resources)
        body = await _search_json(
            items,
            request,
            caller,
            resource_type,
            resources=resources,
            patient_key=context.patient_key,
            trail=trail,
            observation_json=observation_json,
        )
    except EhealthlabError as exc:
        await trail.failure(exc)
        raise
    return FhirResponse(body, headers=_NO_STORE)


async def _search_json(
    items: list[tuple[str, str]],
    request: Request,
    caller: Principal,
    resource_type: str,
    *,
    resources: FhirResources,
    patient_key: bytes,
    trail: _Audit,
    observation_json: Callable[[ObservationSource], Json],
) -> bytes:
    check_format(items)
    base = base_url(request)
    trail.query = items
    query = parse_search(
        resource_type, items, strict=strict_handling(request.headers.get("prefer")), base_url=base
    )
    trail.query = query.used
    tenant = Tenant(caller.kind, caller.organisation_id)
    bound_to = fingerprint(resource_type, query.sort, query.used, _caller(tenant))
    secret = _cursor_secret(patient_key)
    cursor = None if query.cursor is None else decode_cursor(query.cursor, bound_to, secret)
    trail.patients = _named_patients(query.clauses, ("patient", "subject", "_id"))
    search_url = _search_url(base, query)
    if query.summary_count:
        matches = await _one(resources, _count(query, tenant))
        await trail.success(matches)
        return fast.dumps(_bundle(base, [], matches, _self_link(search_url, query), []))
    if resource_type == "Observation":
        page_statement = observations.search_observations(
            query.clauses, tenant, descending=query.descending, limit=query.count, cursor=cursor
        )
    else:
        page_statement = tables.search(
            resource_type,
            query.clauses,
            tenant,
            descending=query.descending,
            limit=query.count,
            cursor=cursor,
        )
    # a first page counts, in the same round trip (unneeded when the page holds everything)
    counting = cursor is None and query.with_total
    statements: list[Statement[Any]] = [page_statement]
    if counting:
        statements.append(_count(query, tenant))
    found = await _run(resources, *statements)
    page: Page = found[0]
    total: int | None = None
    if cursor is not None:
        total = cursor.total
    elif counting:
        total = found[1] if page.has_next else len(page.records)
    if resource_type == "Observation":
        trail.patients |= _patients_of(page.records)
    elif resource_type == "Patient":
        trail.patients |= {record.id for record in page.records}
    await trail.success(len(page.records))
    links = _page_links(search_url, page=page, total=total, bound_to=bound_to, secret=secret)
    to_json = observation_json if resource_type == "Observation" else _TO_JSON[resource_type]
    return await _rendered(
        base,
        page.records,
        to_json,
        total=total,
        self_link=_self_link(search_url, query),
        links=links,
    )


async def _rendered(
    base: str,
    records: Sequence[Any],
    to_json: Callable[[Any], Json],
    *,
    total: int | None,
    self_link: Json,
    links: Sequence[Json],
) -> bytes:
    """The Bundle's bytes; a large one made in the thread pool, so that the event loop
    serves other requests meanwhile."""

    def render() -> bytes:
        resources = [to_json(record) for record in records]
        return fast.dumps(_bundle(base, resources, total, self_link, links))

    if len(records) >= RENDER_IN_THREAD_FROM:
        return await run_in_threadpool(render)
    return render()


def _count(query: SearchQuery, tenant: Tenant) -> Statement[int | None]:
    accurate = query.total == "accurate"
    if query.resource_type == "Observation":
        return observations.count_observations(query.clauses, tenant, accurate=accurate)
    return tables.count(query.resource_type, query.clauses, tenant, accurate=accurate)


def _link_params(query: SearchQuery) -> list[tuple[str, str]]:
    params = list(query.used)
    if query.sort != _default_sort(query):
        params.append(("_sort", query.sort))
    if query.total != "estimate" and not query.summary_count:
        params.append(("_total", query.total))
    if query.summary_count:
        params.append(("_summary", "count"))
    else:
        params.append(("_count", str(query.count)))
    return params


def _default_sort(query: SearchQuery) -> str:
    return SORTS[query.resource_type][0]


def _self_link(search_url: str, query: SearchQuery) -> Json:
    """`search_url`: the search as understood (_search_url); the page's cursor added."""
    if query.cursor is not None:
        search_url += "&" + urlencode([("_cursor", query.cursor)])
    return {"relation": "self", "url": search_url}


def _search_url(base: str, query: SearchQuery) -> str:
    return f"{base}/{query.resource_type}?{urlencode(_link_params(query))}"


def _page_links(
    search_url: str,
    *,
    page: Page,
    total: int | None,
    bound_to: str,
    secret: bytes,
) -> list[Json]:
    links = [{"relation": "first", "url": search_url}]

    def at(after: bool, key: CursorKey) -> str:
        token = encode_cursor(Cursor(after, key, total), bound_to, secret)
        return f"{search_url}&_cursor={token}"  # base64url and '.': nothing to escape

    if page.has_previous and page.first_key is not None:
        links.append({"relation": "previous", "url": at(False, page.first_key)})
    if page.has_next and page.last_key is not None:
        links.append({"relation": "next", "url": at(True, page.last_key)})
    return links


def _bundle(
    base: str,
    resources: Sequence[Json],
    total: int | None,
    self_link: Json,
    links: Sequence[Json],
) -> Json:
    bundle: Json = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [self_link, *links]
    if resources:
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "search": _MATCH,
            }
            for resource in resources
        ]
    return bundle


# -- $lastn -------------------------------------------------------------------------------------


@router.get(
    "/Observation/$lastn",
    summary="The most recent Observations of each code (Observation-lastn)",
    response_class=FhirResponse,
)
async def lastn(request: Request, caller: CachedPrincipalDep, context: AsyncContextDep) -> Response:
    trail = _Audit(request, caller, "Observation", "operation", operation="lastn")
    try:
        access.require(caller.kind, "Observation", "search")
        items = request.query_params.multi_items()
        check_format(items)
        trail.query = items
        base = base_url(request)
        query = parse_lastn(
            items, strict=strict_handling(request.headers.get("prefer")), base_url=base
        )
        trail.query = [*query.used, ("max", str(query.max))]
        trail.patients = _named_patients(query.clauses, ("patient", "subject"))
        tenant = Tenant(caller.kind, caller.organisation_id)
        statement = observations.lastn_observations(query.clauses, tenant, query.max)
        sources = await _one(_resources_of(request), statement)
        trail.patients |= _patients_of(sources)
        await trail.success(len(sources))
    except EhealthlabError as exc:
        await trail.failure(exc)
        raise
    self_link = {
        "relation": "self",
        "url": f"{base}/Observation/$lastn?{urlencode([*query.used, ('max', str(query.max))])}",
    }
    body = await _rendered(
        base, sources, fast.observation_json, total=len(sources), self_link=self_link, links=[]
    )
    return FhirResponse(body, headers=_NO_STORE)


for _type in RESOURCE_TYPES:
    router.add_api_route(
        f"/{_type}",
        _search(_type),
        methods=["GET"],
        summary=f"Search {_type}",
        response_class=FhirResponse,
    )
    router.add_api_route(
        f"/{_type}/_search",
        _search_by_post(_type),
        methods=["POST"],
        summary=f"Search {_type} with a form",
        response_class=FhirResponse,
    )
    router.add_api_route(
        f"/{_type}/{{resource_id:fhirid}}",
        _read(_type),
        methods=["GET"],
        summary=f"Read {_type}",
        response_class=FhirResponse,
    )
