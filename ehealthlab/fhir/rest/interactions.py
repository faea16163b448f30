"""The interactions of the read and search API: capabilities (`GET /fhir/metadata`), read
and search-type, for every resource type served here.

Handlers stay thin: check the token's scopes (access), parse the query (search/query.py),
run the SQL (search/) confined to the caller's tenant, build the JSON with fast.py and answer
orjson bytes as `application/fhir+json` — never FastAPI's JSON encoder, which costs more
than the query. Handlers and their dependencies are coroutines, so a request never waits for
the thread pool, and a token verified recently is trusted without the database
(CachedPrincipalDep); only a large page is rendered in the thread pool.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from functools import cache, lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.auth import ApiContext, AsyncContextDep, CachedPrincipalDep, Principal
from ehealthlab.errors import EhealthlabError, InvalidInputError, NotFoundError
from ehealthlab.fhir import access, audit, outcome
from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.capability import capability_statement
from ehealthlab.fhir.mapping import fast
from ehealthlab.fhir.mapping.ids import parse_observation_id
from ehealthlab.fhir.mapping.rows import PatientRecord, SusResponseRecord
from ehealthlab.fhir.measures.groups import group_json
from ehealthlab.fhir.measures.reports import measure_report_json
from ehealthlab.fhir.outcome import FhirResponse
from ehealthlab.fhir.questionnaires.sus import questionnaire_response_json
from ehealthlab.fhir.rest.runtime import FhirResources, resources_of, run_all, run_one
from ehealthlab.fhir.rest.trail import RequestAudit, named_patients, patients_of, written_trail
from ehealthlab.fhir.search import observations, published, tables
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
    parse_search,
    strict_handling,
)
from ehealthlab.fhir.search.sql import Page, Statement

Json = dict[str, Any]

#: a page with more entries is turned into JSON in the thread pool, not in the event loop
RENDER_IN_THREAD_FROM = 100
#: patient data must not linger in shared caches
NO_STORE = {"Cache-Control": "no-store"}
_MATCH = {"mode": "match"}

_TO_JSON: dict[str, Callable[[Any], Json]] = {
    "Patient": fast.patient_json,
    "Device": fast.device_json,
    "Location": fast.location_json,
    "Organization": fast.organization_json,
    "AuditEvent": audit.audit_event_json,
    "QuestionnaireResponse": questionnaire_response_json,
    # published.read answers the JSON of these: it is the code's
    "Questionnaire": lambda resource: resource,
    "Measure": lambda resource: resource,
    "MeasureReport": measure_report_json,
    "Group": group_json,
}


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


async def metadata(request: Request) -> Response:
    check_format(request.query_params.multi_items())
    return FhirResponse(_capability_bytes(base_url(request)))


# -- read ---------------------------------------------------------------------------------------


def read_handler(resource_type: str) -> Callable[..., Awaitable[Response]]:
    async def read(
        resource_id: str, request: Request, caller: CachedPrincipalDep, context: AsyncContextDep
    ) -> Response:
        trail = RequestAudit(request, caller, resource_type, "read", resource_id=resource_id)
        try:
            access.require(caller.kind, resource_type, "read")
            check_format(request.query_params.multi_items())
            resources = resources_of(request)
            if resource_type == "AuditEvent":
                await written_trail(resources)
            body = await _read_json(resources, caller, resource_type, resource_id, trail)
        except EhealthlabError as exc:
            await trail.failure(exc)
            raise
        return FhirResponse(body, headers=NO_STORE)

    read.__name__ = f"read_{resource_type.lower()}"
    return read


async def _read_json(
    resources: FhirResources,
    caller: Principal,
    resource_type: str,
    resource_id: str,
    trail: RequestAudit,
) -> bytes:
    tenant = Tenant(caller.kind, caller.organisation_id)
    missing = NotFoundError(f"no {resource_type}/{resource_id} here")
    if resource_type == "Observation":
        try:
            key = parse_observation_id(resource_id)
        except InvalidInputError:
            raise missing from None
        source = await run_one(resources, observations.read_observation(key, tenant))
        if source is None:
            raise missing
        trail.patients = patients_of([source])
        resource = fast.observation_json(source)
    else:
        reads = published.read if resource_type in published.TYPES else tables.read
        record = await run_one(resources, reads(resource_type, resource_id, tenant))
        if record is None:
            raise missing
        if isinstance(record, PatientRecord):
            trail.patients = {record.id}
        elif isinstance(record, SusResponseRecord) and record.patient_id is not None:
            trail.patients = {record.patient_id}
        resource = _TO_JSON[resource_type](record)
    await trail.success(1)
    return fast.dumps(resource)


# -- search -----------------------------------------------------------------------------------


def search_handler(resource_type: str) -> Callable[..., Awaitable[Response]]:
    async def search(
        request: Request, caller: CachedPrincipalDep, context: AsyncContextDep
    ) -> Response:
        items = request.query_params.multi_items()
        return await search_response(items, request, caller, context, resource_type)

    search.__name__ = f"search_{resource_type.lower()}"
    return search


def search_by_post_handler(resource_type: str) -> Callable[..., Awaitable[Response]]:
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
    trail = RequestAudit(request, caller, resource_type, "search-type")
    try:
        access.require(caller.kind, resource_type, "search")
        resources = resources_of(request)
        if resource_type == "AuditEvent":
            await written_trail(resources)
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
    return FhirResponse(body, headers=NO_STORE)


async def _search_json(
    items: list[tuple[str, str]],
    request: Request,
    caller: Principal,
    resource_type: str,
    *,
    resources: FhirResources,
    patient_key: bytes,
    trail: RequestAudit,
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
    trail.patients = named_patients(query.clauses, ("patient", "subject", "_id"))
    search_url = _search_url(base, query)
    if query.summary_count:
        matches = await run_one(resources, _count(query, tenant))
        await trail.success(matches)
        return fast.dumps(_bundle(base, [], matches, _self_link(search_url, query), []))
    if resource_type == "Observation":
        page_statement = observations.search_observations(
            query.clauses, tenant, descending=query.descending, limit=query.count, cursor=cursor
        )
    else:
        searches = published.search if resource_type in published.TYPES else tables.search
        page_statement = searches(
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
    found = await run_all(resources, *statements)
    page: Page = found[0]
    total: int | None = None
    if cursor is not None:
        total = cursor.total
    elif counting:
        total = found[1] if page.has_next else len(page.records)
    if resource_type == "Observation":
        trail.patients |= patients_of(page.records)
    elif resource_type == "Patient":
        trail.patients |= {record.id for record in page.records}
    elif resource_type == "QuestionnaireResponse":
        trail.patients |= {r.patient_id for r in page.records if r.patient_id is not None}
    await trail.success(len(page.records))
    links = _page_links(search_url, page=page, total=total, bound_to=bound_to, secret=secret)
    to_json = observation_json if resource_type == "Observation" else _TO_JSON[resource_type]
    return await rendered(
        base,
        page.records,
        to_json,
        total=total,
        self_link=_self_link(search_url, query),
        links=links,
    )


async def rendered(
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
    counts = published.count if query.resource_type in published.TYPES else tables.count
    return counts(query.resource_type, query.clauses, tenant, accurate=accurate)


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
