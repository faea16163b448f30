"""Routes that answer their own errors as FHIR OperationOutcomes (FhirRoute), for the routers
mounted beside the read and search API: bulk export (bulk/routes.py) and transaction Bundles
(transaction/routes.py).

Every error of such a route, its dependencies' included (a missing token), is an
OperationOutcome (`application/fhir+json`), so the routes are FHIR-shaped wherever their
router is mounted; the read and search API gets the same from the application's error
handlers instead (outcome.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ehealthlab.errors import (
    AuthenticationError,
    ConflictError,
    EhealthlabError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    TooManyAttemptsError,
)
from ehealthlab.fhir.bulk.export import (
    RETRY_AFTER_S,
    Issue,
    TooManyExportsError,
    UnsupportedError,
    operation_outcome,
)
from ehealthlab.fhir.transaction.bundle import BundleError

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


class FhirResponse(Response):
    """`application/fhir+json`, encoded with orjson."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


# -- errors as OperationOutcome ---------------------------------------------------------------

# Most specific first: the first class an error is an instance of decides.
_ERRORS: tuple[tuple[type[EhealthlabError], int, str], ...] = (
    (TooManyAttemptsError, 429, "throttled"),
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
            if isinstance(exc, TooManyAttemptsError):
                headers = {"Retry-After": str(exc.retry_after)}
            elif status == 401:
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
