"""Who is calling, and with what: the API's dependencies as typed aliases.

`ContextDep` gives a handler the application's resources (settings, database pool, broker
address); `PrincipalDep` the organisation a bearer token speaks for, and `StartupDep`,
`ProviderDep`, `OperatorDep`, `StartupOrOperatorDep` the same, refusing (403) a token of
another kind of organisation. A missing, malformed, unknown or revoked token is 401.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import psycopg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool

from ehealthlab.errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError
from ehealthlab.gateway import registry, tokens
from ehealthlab.gateway.registry import OrganisationKind, TokenRole
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.settings import Settings
from ehealthlab.store.db import Connection


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What `create_app` opened for the handlers (one per application)."""

    settings: Settings
    pool: ConnectionPool[Connection]
    broker: BrokerAddress
    patient_key: bytes
    alert_rules: AlertRules = DEFAULT_RULES

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A pooled connection inside one transaction: committed when the block ends,
        rolled back when it raises. A database that cannot be reached is a 503."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.OperationalError as exc:  # PoolTimeout is one too
            raise ServiceUnavailableError(
                f"the database is unavailable ({str(exc).strip().splitlines()[0]})"
            ) from exc


def get_context(request: Request) -> ApiContext:
    context = request.app.state.context
    if not isinstance(context, ApiContext):  # only when an app was built without create_app
        raise ServiceUnavailableError("the API is not started")
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


@dataclass(frozen=True, slots=True)
class Principal:
    """The organisation behind a request's bearer token."""

    organisation_id: UUID
    kind: OrganisationKind
    role: TokenRole
    token_id: UUID


_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="ehl_…",
    description="An API token (`ehl_…`) from `ehealthlab admin` or POST /api/v1/organisations.",
)


def get_principal(
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise AuthenticationError("send an API token as `Authorization: Bearer ehl_…`")
    token = credentials.credentials
    if not tokens.looks_like_token(token):
        raise AuthenticationError("the bearer token is not an ehealthlab API token")
    with context.transaction() as conn:
        owner = registry.authenticate(conn, tokens.hash_token(token))
    if owner is None or not tokens.token_matches(token, owner.token_hash):
        raise AuthenticationError("the bearer token is unknown or revoked")
    return Principal(owner.organisation_id, owner.kind, owner.role, owner.token_id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]

_KIND_NAMES = {"startup": "start-ups", "provider": "health providers", "operator": "the operator"}


def require_kind(*kinds: OrganisationKind) -> Callable[[Principal], Principal]:
    """A dependency admitting tokens of these kinds of organisation only (else 403: the
    route exists for everyone, so saying so reveals nothing)."""
    allowed = " and ".join(_KIND_NAMES[kind] for kind in kinds)

    def check(principal: PrincipalDep) -> Principal:
        if principal.kind not in kinds:
            raise PermissionDeniedError(
                f"this route is for {allowed}; the token belongs to a {principal.kind}"
            )
        return principal

    return check


OperatorDep = Annotated[Principal, Depends(require_kind("operator"))]
StartupDep = Annotated[Principal, Depends(require_kind("startup"))]
ProviderDep = Annotated[Principal, Depends(require_kind("provider"))]
StartupOrOperatorDep = Annotated[Principal, Depends(require_kind("startup", "operator"))]
ProviderOrOperatorDep = Annotated[Principal, Depends(require_kind("provider", "operator"))]
