"""Errors under /fhir as FHIR OperationOutcomes: the FHIR rendering of the platform's one
error tree (the rest of the API answers RFC 9457 problem details, api/problems.py).

`install(app)` puts a dispatcher in front of the application's error handlers: a request
under /fhir gets an OperationOutcome (`application/fhir+json`), any other the handler that
was there before. Bad input is always a 4xx; a 500 means a bug, and says nothing internal.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse

from ehealthlab.errors import (
    AuthenticationError,
    ConflictError,
    EhealthlabError,
    InvalidFieldError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    TooManyAttemptsError,
)
from ehealthlab.fhir.search.query import UnsupportedFormatError

FHIR_MEDIA_TYPE = "application/fhir+json"
FHIR_PREFIX = "/fhir"

log = logging.getLogger(__name__)

Handler = Callable[[Request, Any], Awaitable[Response]]
#: what Starlette accepts as an exception handler: a coroutine function or a plain one
AnyHandler = Callable[[Request, Any], Response | Awaitable[Response]]


class FhirResponse(Response):
    """`application/fhir+json`; the content is bytes already (fast.dumps)."""

    media_type = FHIR_MEDIA_TYPE


# Most specific first: the first class an error is an instance of decides.
# (status, OperationOutcome.issue.code from http://hl7.org/fhir/issue-type)
_KINDS: tuple[tuple[type[EhealthlabError], int, str], ...] = (
    (TooManyAttemptsError, 429, "throttled"),
    (AuthenticationError, 401, "login"),
    (PermissionDeniedError, 403, "forbidden"),
    (NotFoundError, 404, "not-found"),
    (UnsupportedFormatError, 406, "not-supported"),
    (ConflictError, 409, "conflict"),
    (InvalidFieldError, 422, "invalid"),
    (InvalidInputError, 400, "invalid"),
    (ServiceUnavailableError, 503, "transient"),
)


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def outcome_response(
    status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None
) -> FhirResponse:
    return FhirResponse(
        orjson.dumps(operation_outcome(code, diagnostics)), status_code=status, headers=headers
    )


def status_of(exc: EhealthlabError) -> tuple[int, str]:
    """The HTTP status and issue type of an error of the tree (500/exception if it has no
    HTTP meaning: a bug or a broken server)."""
    for cls, status, code in _KINDS:
        if isinstance(exc, cls):
            return status, code
    return 500, "exception"


def error_response(request: Request, exc: EhealthlabError) -> FhirResponse:
    status, code = status_of(exc)
    headers = None
    detail = str(exc)
    if isinstance(exc, TooManyAttemptsError):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": 'Bearer realm="ehealthlab"'}
    elif isinstance(exc, ServiceUnavailableError):
        headers = {"Retry-After": "5"}
    if status == 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        detail = "the server could not complete the request; the operator has the details"
    return outcome_response(status, code, detail, headers)


def is_fhir(request: Request) -> bool:
    path = request.url.path
    return path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")


async def _platform_error(request: Request, exc: EhealthlabError) -> Response:
    return error_response(request, exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    messages = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return outcome_response(400, "invalid", messages or "the request is not valid")


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Routing's own answers: no such type or path (404), method not allowed (405)."""
    phrase = HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        return outcome_response(
            404, "not-found", f"{request.url.path} is not a resource or operation served here"
        )
    if exc.status_code == 405:
        return outcome_response(
            405,
            "not-supported",
            f"{request.method} is not supported on {request.url.path}",
            dict(exc.headers or {}),
        )
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    return outcome_response(exc.status_code, "processing", detail, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return outcome_response(
        500, "exception", "the server could not complete the request; the operator has the details"
    )


async def _plain_500(request: Request, exc: Exception) -> Response:
    """What Starlette answers an unhandled error with, for everything outside /fhir."""
    return PlainTextResponse("Internal Server Error", status_code=500)


def install(app: FastAPI) -> None:
    """Answer errors under /fhir with OperationOutcomes; leave every other path's handlers
    as they were (call after problems.install)."""
    ours: dict[Any, Handler] = {
        EhealthlabError: _platform_error,
        RequestValidationError: _validation_error,
        StarletteHTTPException: _http_error,
        Exception: _unexpected,
    }
    for exc_class, fhir_handler in ours.items():
        previous: AnyHandler = app.exception_handlers.get(exc_class, _plain_500)
        app.add_exception_handler(exc_class, _dispatch(fhir_handler, previous))


def _dispatch(fhir_handler: Handler, previous: AnyHandler) -> Handler:
    async def handle(request: Request, exc: Any) -> Response:
        if is_fhir(request):
            return await fhir_handler(request, exc)
        answer = previous(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    return handle
