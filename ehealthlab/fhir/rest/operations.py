"""Operations of the read and search API: `GET /fhir/Observation/$lastn`, the most recent
Observations of each code (Observation-lastn), with any Observation search parameter.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import Request, Response

from ehealthlab.api.auth import AsyncContextDep, CachedPrincipalDep
from ehealthlab.errors import EhealthlabError
from ehealthlab.fhir import access
from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.mapping import fast
from ehealthlab.fhir.outcome import FhirResponse
from ehealthlab.fhir.rest.interactions import NO_STORE, base_url, rendered
from ehealthlab.fhir.rest.runtime import resources_of, run_one
from ehealthlab.fhir.rest.trail import RequestAudit, named_patients, patients_of
from ehealthlab.fhir.search import observations
from ehealthlab.fhir.search.query import check_format, parse_lastn, strict_handling


async def lastn(request: Request, caller: CachedPrincipalDep, context: AsyncContextDep) -> Response:
    trail = RequestAudit(request, caller, "Observation", "operation", operation="lastn")
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
        trail.patients = named_patients(query.clauses, ("patient", "subject"))
        tenant = Tenant(caller.kind, caller.organisation_id)
        statement = observations.lastn_observations(query.clauses, tenant, query.max)
        sources = await run_one(resources_of(request), statement)
        trail.patients |= patients_of(sources)
        await trail.success(len(sources))
    except EhealthlabError as exc:
        await trail.failure(exc)
        raise
    self_link = {
        "relation": "self",
        "url": f"{base}/Observation/$lastn?{urlencode([*query.used, ('max', str(query.max))])}",
    }
    body = await rendered(
        base, sources, fast.observation_json, total=len(sources), self_link=self_link, links=[]
    )
    return FhirResponse(body, headers=NO_STORE)
