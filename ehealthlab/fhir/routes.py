"""The FHIR R4 REST API at /fhir: capabilities, read, search and Observation/$lastn.

Handlers stay thin: check the token's scopes (access), parse the query (search), run the SQL
(queries) confined to the caller's tenant, build the JSON with fast.py and answer orjson
bytes as `application/fhir+json` — never FastAPI's JSON encoder, which costs more than the
query. Reads and searches of patient data are audited in the same transaction (audit).
`install(app)` mounts the router and the OperationOutcome error handlers.

Routes name their resource types and match only FHIR ids, so other routers under /fhir
($export, transaction Bundles) can be mounted before or after this one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import cache, lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from ehealthlab.api.auth import ApiContext, ContextDep, Principal, PrincipalDep
from ehealthlab.errors import (
    EhealthlabError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
)
from ehealthlab.fhir import access, audit, fast, outcome, queries
from ehealthlab.fhir.access import PATIENT_DATA, Tenant
from ehealthlab.fhir.audit import AuditEntry, Interaction
from ehealthlab.fhir.capability import capability_statement
from ehealthlab.fhir.ids import parse_observation_id
from ehealthlab.fhir.outcome import FhirResponse
from ehealthlab.fhir.queries import ObservationSource
from ehealthlab.fhir.rows import BloodPressureReadings, PatientRecord
from ehealthlab.fhir.search import (
    SORTS,
    Clause,
    Cursor,
    CursorKey,
    SearchQuery,
    check_format,
    decode_cursor,
    encode_cursor,
    fingerprint,
    parse_lastn,
    parse_search,
    strict_handling,
)

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: the resource types read and searched here (AuditEvent: the operator only)
RESOURCE_TYPES = ("Observation", "Patient", "Device", "Location", "Organization", "AuditEvent")
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

router = APIRouter(prefix="/fhir", tags=["fhir"])


def install(app: FastAPI) -> None:
    """Serve /fhir on `app`, with OperationOutcomes for its errors."""
    app.include_router(router)
    outcome.install(app)


def base_url(request: Request) -> str:
    """The FHIR base of this server as the client reached it (links and fullUrls)."""
    return str(request.base_url).rstrip("/") + outcome.FHIR_PREFIX


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
def metadata(request: Request) -> Response:
    check_format(request.query_params.multi_items())
    return FhirResponse(_capability_bytes(base_url(request)))


# -- auditing ---------------------------------------------------------------------------------


class _Audit:
    """What a request will record, if it reads patient data; failures are recorded too."""

    def __init__(
        self,
        caller: Principal,
        resource_type: str,
        interaction: Interaction,
        *,
        resource_id: str | None = None,
        operation: str | None = None,
    ) -> None:
        self.enabled = resource_type in PATIENT_DATA
        self.caller = caller
        self.resource_type = resource_type
        self.interaction: Interaction = interaction
        self.resource_id = resource_id
        self.operation = operation
        self.query: str | None = None
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
            query=self.query,
            patient_ids=tuple(self.patients),
            detail=detail,
            results=results,
        )

    def success(self, conn: Any, results: int | None) -> None:
        if self.enabled:
            audit.record(conn, self.entry(200, "", results))

    def failure(self, context: ApiContext, exc: EhealthlabError) -> None:
        """Record a refused or failed request in a transaction of its own."""
        if not self.enabled:
            return
        status, _ = outcome.status_of(exc)
        try:
            with context.transaction() as conn:
                audit.record(conn, self.entry(status, str(exc)[:500]))
        except ServiceUnavailableError:
            log.exception("could not record the audit event of a failed %s", self.interaction)


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


def _read(resource_type: str) -> Callable[..., Response]:
    def read(
        resource_id: str, request: Request, caller: PrincipalDep, context: ContextDep
    ) -> Response:
        trail = _Audit(caller, resource_type, "read", resource_id=resource_id)
        try:
            access.require(caller.kind, resource_type, "read")
            check_format(request.query_params.multi_items())
            body = _read_json(context, caller, resource_type, resource_id, trail)
        except EhealthlabError as exc:
            trail.failure(context, exc)
            raise
        return FhirResponse(body, headers=_NO_STORE)

    read.__name__ = f"read_{resource_type.lower()}"
    return read


def _read_json(
    context: ApiContext, caller: Principal, resource_type: str, resource_id: str, trail: _Audit
) -> bytes:
    tenant = Tenant(caller.kind, caller.organisation_id)
    missing = NotFoundError(f"no {resource_type}/{resource_id} here")
    with context.transaction() as conn:
        if resource_type == "Observation":
            try:
                key = parse_observation_id(resource_id)
            except InvalidInputError:
                raise missing from None
            queries.choose_plans(conn, "Observation", [Clause("_id", (key,))])
            source = queries.read_observation(conn, key, tenant)
            if source is None:
                raise missing
            trail.patients = _patients_of([source])
            resource = fast.observation_json(source)
        else:
            record = queries.read(conn, resource_type, resource_id, tenant)
            if record is None:
                raise missing
            if isinstance(record, PatientRecord):
                trail.patients = {record.id}
            resource = _TO_JSON[resource_type](record)
        trail.success(conn, 1)
    return fast.dumps(resource)


# -- search -----------------------------------------------------------------------------------


def _search(resource_type: str) -> Callable[..., Response]:
    def search(request: Request, caller: PrincipalDep, context: ContextDep) -> Response:
        items = request.query_params.multi_items()
        return _search_response(items, request, caller, context, resource_type)

    search.__name__ = f"search_{resource_type.lower()}"
    return search


def _search_by_post(resource_type: str) -> Callable[..., Awaitable[Response]]:
    """POST [type]/_search: the parameters in a form body (and the query string), which
    FHIR servers accept as well as GET; paging links are GET links."""

    async def search_by_post(
        request: Request, caller: PrincipalDep, context: ContextDep
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
        return await run_in_threadpool(
            _search_response, items, request, caller, context, resource_type
        )

    search_by_post.__name__ = f"search_{resource_type.lower()}_by_post"
    return search_by_post


def _search_response(
    items: list[tuple[str, str]],
    request: Request,
    caller: Principal,
    context: ApiContext,
    resource_type: str,
) -> Response:
    trail = _Audit(caller, resource_type, "search-type")
    try:
        access.require(caller.kind, resource_type, "search")
        body = _search_json(items, request, context, caller, resource_type, trail=trail)
    except EhealthlabError as exc:
        trail.failure(context, exc)
        raise
    return FhirResponse(body, headers=_NO_STORE)


def _search_json(
    items: list[tuple[str, str]],
    request: Request,
    context: ApiContext,
    caller: Principal,
    resource_type: str,
    *,
    trail: _Audit,
) -> bytes:
    check_format(items)
    base = base_url(request)
    trail.query = urlencode(items)
    query = parse_search(
        resource_type, items, strict=strict_handling(request.headers.get("prefer")), base_url=base
    )
    trail.query = urlencode(query.used)
    tenant = Tenant(caller.kind, caller.organisation_id)
    bound_to = fingerprint(resource_type, query.sort, query.used, _caller(tenant))
    secret = _cursor_secret(context.patient_key)
    cursor = None if query.cursor is None else decode_cursor(query.cursor, bound_to, secret)
    observations = resource_type == "Observation"
    trail.patients = _named_patients(query.clauses, ("patient", "subject", "_id"))
    with context.transaction() as conn:
        queries.choose_plans(conn, resource_type, query.clauses)
        if query.summary_count:
            matches = _count(conn, query, tenant)
            trail.success(conn, matches)
            return fast.dumps(_bundle(base, [], matches, _self_link(base, query), []))
        if observations:
            page = queries.search_observations(
                conn,
                query.clauses,
                tenant,
                descending=query.descending,
                limit=query.count,
                cursor=cursor,
            )
            resources = [fast.observation_json(source) for source in page.records]
            trail.patients |= _patients_of(page.records)
        else:
            page = queries.search(
                conn,
                resource_type,
                query.clauses,
                tenant,
                descending=query.descending,
                limit=query.count,
                cursor=cursor,
            )
            to_json = _TO_JSON[resource_type]
            resources = [to_json(record) for record in page.records]
            if resource_type == "Patient":
                trail.patients |= {record.id for record in page.records}
        total: int | None = None
        if cursor is not None:
            total = cursor.total
        elif query.with_total:
            # a first page that is also the last holds the whole result: nothing to count
            has_more = page.has_next
            total = _count(conn, query, tenant) if has_more else len(resources)
        trail.success(conn, len(resources))
    links = _page_links(base, query, page=page, total=total, bound_to=bound_to, secret=secret)
    return fast.dumps(_bundle(base, resources, total, _self_link(base, query), links))


def _count(conn: Any, query: SearchQuery, tenant: Tenant) -> int | None:
    accurate = query.total == "accurate"
    if query.resource_type == "Observation":
        return queries.count_observations(conn, query.clauses, tenant, accurate=accurate)
    return queries.count(conn, query.resource_type, query.clauses, tenant, accurate=accurate)


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


def _url(base: str, resource_type: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{base}/{resource_type}?{urlencode(params)}"


def _self_link(base: str, query: SearchQuery) -> Json:
    params = _link_params(query)
    if query.cursor is not None:
        params.append(("_cursor", query.cursor))
    return {"relation": "self", "url": _url(base, query.resource_type, params)}


def _page_links(
    base: str,
    query: SearchQuery,
    *,
    page: queries.Page,
    total: int | None,
    bound_to: str,
    secret: bytes,
) -> list[Json]:
    params = _link_params(query)
    links = [{"relation": "first", "url": _url(base, query.resource_type, params)}]

    def at(after: bool, key: CursorKey) -> str:
        token = encode_cursor(Cursor(after, key, total), bound_to, secret)
        return _url(base, query.resource_type, [*params, ("_cursor", token)])

    if page.has_previous and page.keys:
        links.append({"relation": "previous", "url": at(False, page.keys[0])})
    if page.has_next and page.keys:
        links.append({"relation": "next", "url": at(True, page.keys[-1])})
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
def lastn(request: Request, caller: PrincipalDep, context: ContextDep) -> Response:
    trail = _Audit(caller, "Observation", "operation", operation="lastn")
    try:
        access.require(caller.kind, "Observation", "search")
        items = request.query_params.multi_items()
        check_format(items)
        trail.query = urlencode(items)
        base = base_url(request)
        query = parse_lastn(
            items, strict=strict_handling(request.headers.get("prefer")), base_url=base
        )
        trail.query = urlencode([*query.used, ("max", str(query.max))])
        trail.patients = _named_patients(query.clauses, ("patient", "subject"))
        tenant = Tenant(caller.kind, caller.organisation_id)
        with context.transaction() as conn:
            queries.choose_plans(conn, "Observation", query.clauses)
            sources = queries.lastn_observations(conn, query.clauses, tenant, query.max)
            trail.patients |= _patients_of(sources)
            trail.success(conn, len(sources))
    except EhealthlabError as exc:
        trail.failure(context, exc)
        raise
    resources = [fast.observation_json(source) for source in sources]
    self_link = {
        "relation": "self",
        "url": f"{base}/Observation/$lastn?{urlencode([*query.used, ('max', str(query.max))])}",
    }
    bundle = _bundle(base, resources, len(resources), self_link, [])
    return FhirResponse(fast.dumps(bundle), headers=_NO_STORE)


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
