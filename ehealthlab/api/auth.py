"""Who is calling, and with what: the API's dependencies as typed aliases.

`ContextDep` gives a handler the application's resources (settings, database pool, broker
address); `PrincipalDep` the organisation a bearer token speaks for, and `StartupDep`,
`ProviderDep`, `OperatorDep`, `StartupOrOperatorDep` the same, refusing (403) a token of
another kind of organisation. A missing, malformed, unknown or revoked token is 401.

Every failed token check is counted against the client's address (ratelimit.py): past a
burst, failures are answered 429 with Retry-After, while a correct token always passes.

`CachedPrincipalDep` is `PrincipalDep` for read-only APIs that answer thousands of requests a
second (/fhir): a token verified in the database is trusted for TOKEN_CACHE_SECONDS more
without asking again, so a revocation takes effect there within that time; `PrincipalDep`
(the rest of /api/v1, which changes things) still asks the database on every request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, NoReturn
from uuid import UUID

import psycopg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.ratelimit import FailureLimiter, client_key
from ehealthlab.errors import (
    AuthenticationError,
    PermissionDeniedError,
    ServiceUnavailableError,
    TooManyAttemptsError,
)
from ehealthlab.gateway import token_registry, tokens
from ehealthlab.gateway.organisation_registry import OrganisationKind
from ehealthlab.gateway.token_registry import TokenRole
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.settings import Settings
from ehealthlab.store.db import Connection

#: how long a verified token is trusted by CachedPrincipalDep: a revoked token may still be
#: accepted there this long after its revocation. The promise is 5 s (docs/reliability-
#: security.md); 4 s leaves a second for a request already in flight when the entry expires
TOKEN_CACHE_SECONDS = 4.0
#: tokens remembered at most (the least recently verified are forgotten first)
TOKEN_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    """The organisation behind a request's bearer token."""

    organisation_id: UUID
    kind: OrganisationKind
    role: TokenRole
    token_id: UUID


class TokenCache:
    """Tokens recently verified in the database, by their hash, each trusted until its
    deadline. Only successes are kept: an unknown or revoked token is asked about every
    time. Bounded; safe to share between threads."""

    def __init__(
        self,
        seconds: float = TOKEN_CACHE_SECONDS,
        size: int = TOKEN_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token_hash: bytes) -> Principal | None:
        """The principal of a token verified less than `seconds` ago, else None."""
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._entries[token_hash]
                return None
            return entry[1]

    def put(self, token_hash: bytes, principal: Principal) -> None:
        """Remember a token just verified."""
        with self._lock:
            self._entries[token_hash] = (self.clock() + self.seconds, principal)
            self._entries.move_to_end(token_hash)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What `create_app` opened for the handlers (one per application)."""

    settings: Settings
    pool: ConnectionPool[Connection]
    broker: BrokerAddress
    patient_key: bytes
    alert_rules: AlertRules = DEFAULT_RULES
    #: tokens verified recently (CachedPrincipalDep); one per application, never shared
    tokens: TokenCache = field(default_factory=TokenCache, compare=False, repr=False)
    #: failed token checks per client (ratelimit.py); one per application, never shared, with
    #: this worker's share of the budget
    failures: FailureLimiter = field(default_factory=FailureLimiter, compare=False, repr=False)

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


async def get_context_async(request: Request) -> ApiContext:
    """get_context as a coroutine: FastAPI runs a plain function dependency in its thread
    pool, a trip that costs more than what this one does."""
    return get_context(request)


#: ContextDep for coroutine handlers (no trip to the thread pool)
AsyncContextDep = Annotated[ApiContext, Depends(get_context_async)]


_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="ehl_…",
    description="An API token (`ehl_…`) from `ehealthlab admin` or POST /api/v1/organisations.",
)


def get_principal(
    request: Request,
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    client = client_key(request.client.host if request.client else None)
    return _verify(context, _bearer_token(context, client, credentials), client)


def _bearer_token(
    context: ApiContext, client: str | None, credentials: HTTPAuthorizationCredentials | None
) -> str:
    """The presented token; a missing one is no attempt, a malformed one a failed one."""
    if credentials is None:
        raise AuthenticationError("send an API token as `Authorization: Bearer ehl_…`")
    token = credentials.credentials
    if not tokens.looks_like_token(token):
        _failed(context, client, "the bearer token is not an ehealthlab API token")
    return token


def _failed(context: ApiContext, client: str | None, message: str) -> NoReturn:
    """Count a failed check against the client; 429 once it is past its burst, else 401."""
    wait = context.failures.failed(client)
    if wait:
        raise TooManyAttemptsError(
            f"too many failed token checks from this address; try again in {wait} s", wait
        )
    raise AuthenticationError(message)


def _verify(context: ApiContext, token: str, client: str | None) -> Principal:
    """Ask the database who the token speaks for (it must be known and not revoked).

    The lookup is by the token's SHA-256 (an index probe); the stored hash is then compared
    with hmac.compare_digest, so no secret is ever compared byte by byte in the clear. A
    correct token is never throttled: only failures are counted."""
    with context.transaction() as conn:
        owner = token_registry.authenticate(conn, tokens.hash_token(token))
    if owner is None or not tokens.token_matches(token, owner.token_hash):
        _failed(context, client, "the bearer token is unknown or revoked")
    return Principal(owner.organisation_id, owner.kind, owner.role, owner.token_id)


async def get_cached_principal(
    request: Request,
    context: AsyncContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """get_principal, trusting a token verified less than TOKEN_CACHE_SECONDS ago.

    A coroutine, so that a remembered token costs no trip to the thread pool.
    """
    client = client_key(request.client.host if request.client else None)
    token = _bearer_token(context, client, credentials)
    token_hash = tokens.hash_token(token)
    principal = context.tokens.get(token_hash)
    if principal is None:
        principal = await run_in_threadpool(_verify, context, token, client)
        context.tokens.put(token_hash, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
#: PrincipalDep for read-only routes: a revocation takes effect within TOKEN_CACHE_SECONDS
CachedPrincipalDep = Annotated[Principal, Depends(get_cached_principal)]

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
