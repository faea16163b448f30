"""RFC 9457 problem details: the HTTP rendering of the platform's one error tree.

Handlers raise `ehealthlab.errors` exceptions; this module is the only place that turns them
into status codes. `type` is a stable URN per kind of problem (clients may switch on it),
`title` a short summary, `detail` what was wrong this time. Bodies never echo the input (a
validation error of a patient identifier must not send the identifier back).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

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

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:ehealthlab:problem:"

log = logging.getLogger(__name__)


class ProblemResponse(Response):
    """`application/problem+json`, encoded with orjson."""

    media_type = PROBLEM_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass(frozen=True, slots=True)
class _Kind:
    status: int
    slug: str
    title: str


# Most specific first: the first class an error is an instance of decides.
_KINDS: tuple[tuple[type[EhealthlabError], _Kind], ...] = (
    (TooManyAttemptsError, _Kind(429, "too-many-attempts", "Too many failed token checks")),
    (AuthenticationError, _Kind(401, "unauthenticated", "Missing or invalid bearer token")),
    (PermissionDeniedError, _Kind(403, "forbidden", "Not allowed for this organisation")),
    (NotFoundError, _Kind(404, "not-found", "Not found")),
    (ConflictError, _Kind(409, "conflict", "Conflicts with what exists")),
    (InvalidFieldError, _Kind(422, "invalid-field", "A field is not acceptable")),
    (InvalidInputError, _Kind(400, "invalid-input", "Invalid input")),
    (ServiceUnavailableError, _Kind(503, "unavailable", "A service is unavailable")),
)
_INTERNAL = _Kind(500, "internal", "Internal error")


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    request: Request,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: object,
) -> ProblemResponse:
    body: dict[str, object] = {
        "type": _TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extensions,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def _kind_of(exc: EhealthlabError) -> _Kind:
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    return _INTERNAL


def status_of(exc: EhealthlabError) -> int:
    """The HTTP status of an error of the tree (500 for one with no HTTP meaning): the one
    table, for the JSON API's problems and the portal's pages alike."""
    return _kind_of(exc).status


async def _platform_error(request: Request, exc: EhealthlabError) -> Response:
    kind = _kind_of(exc)
    headers = None
    extensions: dict[str, object] = {}
    detail = str(exc)
    if isinstance(exc, TooManyAttemptsError):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": 'Bearer realm="ehealthlab"'}
    elif isinstance(exc, ServiceUnavailableError):
        headers = {"Retry-After": "5"}
    elif isinstance(exc, ConflictError):
        extensions = {k: v for k, v in exc.extensions.items() if v is not None}
    elif isinstance(exc, InvalidFieldError):
        extensions = {"errors": [{"field": f"body.{f}", "message": m} for f, m in exc.errors]}
    if kind is _INTERNAL:
        # an error of the tree with no HTTP meaning is a bug or a broken server: log it,
        # tell the caller nothing internal
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        detail = "the server could not complete the request; the operator has the details"
    return problem(kind.status, kind.slug, kind.title, detail, request, headers=headers,
                   **extensions)  # fmt: skip


def _field_name(location: tuple[int | str, ...]) -> str:
    """`body.care_plan.spo2`; a refused key of a mapping is `body.care_plan.coffee[key]`."""
    name = ""
    for part in location:
        text = str(part)
        name += text if text.startswith("[") or not name else "." + text
    return name


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = [
        {"field": _field_name(tuple(error["loc"])), "message": error["msg"], "code": error["type"]}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    if len(errors) > 3:
        summary += f" (and {len(errors) - 3} more)"
    return problem(422, "invalid-field", "The request is not valid", summary, request,
                   errors=errors)  # fmt: skip


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (no such route, method not allowed) in the same format."""
    phrase = HTTPStatus(exc.status_code).phrase
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else phrase
    return problem(exc.status_code, slug, phrase, detail, request, headers=exc.headers)


def install(app: FastAPI) -> None:
    """Render every error of the tree, request validation and routing as problem details."""
    app.exception_handler(EhealthlabError)(_platform_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)


class Problem(BaseModel):
    """An RFC 9457 problem detail (`application/problem+json`)."""

    type: str = Field(examples=["urn:ehealthlab:problem:not-found"])
    title: str
    status: int
    detail: str = Field(description="what was wrong, for a person")
    instance: str = Field(description="the request path")


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the problem responses a route may give."""
    meaning = {
        400: "invalid input",
        401: "missing, unknown or revoked bearer token",
        403: "this route is for another kind of organisation",
        404: "no such thing, or not one the caller may see",
        409: "conflicts with what exists",
        422: "a field of the request is not valid (`errors` lists each)",
        429: "too many failed token checks from this address: wait `Retry-After` seconds",
        503: "the database or the MQTT broker is unavailable",
    }
    schema = Problem.model_json_schema()
    return {
        status: {
            "description": meaning[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
        }
        for status in statuses
    }
