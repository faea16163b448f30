"""`/api/v1/organisations` and `/api/v1/me`: who takes part, and whom a token speaks for.

The operator admits organisations (each with a first admin token, shown once) and lists
them; any token may ask which organisation, kind and role it stands for.
"""

from __future__ import annotations

from fastapi import APIRouter

from ehealthlab.api.auth import ContextDep, OperatorDep, PrincipalDep
from ehealthlab.api.problems import responses
from ehealthlab.errors import NotFoundError
from ehealthlab.gateway import organisation_registry, schemas, token_registry
from ehealthlab.gateway.routes_common import AUTH

router = APIRouter(prefix="/api/v1")


@router.post(
    "/organisations",
    status_code=201,
    tags=["organisations"],
    summary="Admit an organisation (operator)",
    description="Creates a start-up, health provider or operator organisation and its first "
    "API token (admin role). The token is shown only in this response.",
    responses=responses(*AUTH, 409, 422),
)
def create_organisation(
    caller: OperatorDep, body: schemas.OrganisationCreate, context: ContextDep
) -> schemas.OrganisationCreated:
    with context.transaction() as conn:
        organisation = organisation_registry.create_organisation(
            conn, body.kind, body.name, body.fls_code, simulated=body.simulated
        )
        token_row, token = token_registry.create_token(
            conn, organisation.id, "admin", "first token"
        )
    return schemas.OrganisationCreated(
        id=organisation.id,
        kind=organisation.kind,
        name=organisation.name,
        token_id=token_row.id,
        token=token,
    )


@router.get(
    "/organisations",
    tags=["organisations"],
    summary="List organisations (operator)",
    responses=responses(*AUTH),
)
def list_organisations(caller: OperatorDep, context: ContextDep) -> list[schemas.Organisation]:
    with context.transaction() as conn:
        rows = organisation_registry.list_organisations(conn)
    return [
        schemas.Organisation(
            id=r.id, kind=r.kind, name=r.name, created_at=r.created_at, simulated=r.simulated
        )
        for r in rows
    ]


@router.get(
    "/me",
    tags=["organisations"],
    summary="Whom this token speaks for",
    responses=responses(401),
)
def whoami(caller: PrincipalDep, context: ContextDep) -> schemas.Me:
    with context.transaction() as conn:
        organisation = organisation_registry.get_organisation(conn, caller.organisation_id)
    if organisation is None:  # the token's organisation cannot vanish (foreign key)
        raise NotFoundError("no such organisation")
    return schemas.Me(
        organisation_id=organisation.id,
        kind=organisation.kind,
        name=organisation.name,
        role=caller.role,
        token_id=caller.token_id,
    )
