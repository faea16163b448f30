"""What every page of the portal shares: its route class, who is logged in, posted forms.

`PortalRoute` turns the platform's errors into HTML pages and adds the security headers, so a
page module only raises as the JSON API does. `current_user` asks the database on every
request (a revoked token ends its sessions at once) and the `*User` dependencies refuse the
other kinds of organisation with the API's own check. `FormDep` is a posted form whose CSRF
token is the session's: every POST of the portal takes one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ehealthlab.api.auth import AsyncContextDep, ContextDep, Principal, require_kind
from ehealthlab.errors import (
    AuthenticationError,
    EhealthlabError,
    InvalidInputError,
    PermissionDeniedError,
)
from ehealthlab.gateway import organisation_registry, token_registry
from ehealthlab.gateway.organisation_registry import OrganisationKind
from ehealthlab.portal import forms, render
from ehealthlab.portal.ended_sessions import is_ended
from ehealthlab.portal.session import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SECURE_LOGIN_COOKIE,
    SECURE_SESSION_COOKIE,
    SESSION_COOKIE,
    Session,
    csrf_matches,
    csrf_token,
    open_session,
    session_key,
)
from ehealthlab.settings import Settings
from ehealthlab.store.reference import municipality_rows

log = logging.getLogger(__name__)

#: what a redirect after a successful form says (only these: nothing typed is echoed)
NOTICES = {
    "revoked": "The device is revoked: it can no longer connect or publish. Its readings stay.",
    "patient": "The patient is registered.",
    "enrolled": "The patient is enrolled with the device.",
    "ended": "The enrolment ends today, today included: the device's later readings are not "
    "the patient's. The device can be enrolled again from tomorrow.",
    "acknowledged": "The alert is acknowledged.",
    "mini-pilot": "The mini-pilot is defined.",
    "bye": "You are logged out.",
}


class PortalRoute(APIRoute):
    """A route whose errors are HTML pages and whose responses carry the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except EhealthlabError as exc:
                response = render.error_page(request, exc)
            except RequestValidationError:
                response = render.error_page(
                    request, InvalidInputError("the address has a parameter that is not valid")
                )
            except StarletteHTTPException:
                raise  # the framework's own answers (none of the portal's routes raise one)
            except Exception:  # a bug or a broken server: logged, and a page saying so
                log.exception("%s %s failed", request.method, request.url.path)
                response = render.error_page(request, EhealthlabError("internal error"))
            return render.secure(response)

        return portal_handler


def portal_router() -> APIRouter:
    """A router of portal pages: under /portal, errors as pages, not in the OpenAPI document."""
    return APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)


# -- sessions ---------------------------------------------------------------------------------


def portal_key(settings: Settings) -> bytes:
    """The key that signs session cookies and CSRF tokens."""
    secret = settings.portal_secret
    return session_key(
        secret.get_secret_value().encode() if secret else settings.require_patient_key()
    )


def over_tls(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_names(request: Request) -> tuple[str, str]:
    """(session, login nonce) cookie names: `__Host-` ones over TLS, where they are Secure."""
    if over_tls(request):
        return SECURE_SESSION_COOKIE, SECURE_LOGIN_COOKIE
    return SESSION_COOKIE, LOGIN_COOKIE


def set_cookie(request: Request, response: Response, name: str, value: str, seconds: int) -> None:
    response.set_cookie(
        name, value, max_age=seconds, path="/", secure=over_tls(request), httponly=True,
        samesite="strict",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PortalUser:
    """Who the session speaks for, and what its forms must carry."""

    principal: Principal
    name: str
    session: Session
    csrf: str

    @property
    def kind(self) -> OrganisationKind:
        return self.principal.kind


def current_user(request: Request, context: ContextDep) -> PortalUser:
    """The session's organisation, asked of the database on every request: a revoked API
    token ends its sessions at once."""
    key = portal_key(context.settings)
    value = request.cookies.get(cookie_names(request)[0])
    session = open_session(key, value, datetime.now(UTC)) if value else None
    if session is None:
        raise AuthenticationError("log in with your API token")
    with context.transaction() as conn:
        if is_ended(conn, session.session_id):  # logged out, on whichever worker
            raise AuthenticationError("log in with your API token")
        owner = token_registry.authenticate(conn, session.token_hash)
        organisation = (
            None
            if owner is None
            else organisation_registry.get_organisation(conn, owner.organisation_id)
        )
    if owner is None or organisation is None:
        raise AuthenticationError("the API token of this session is revoked; log in again")
    principal = Principal(owner.organisation_id, owner.kind, owner.role, owner.token_id)
    return PortalUser(principal, organisation.name, session, csrf_token(key, session.session_id))


UserDep = Annotated[PortalUser, Depends(current_user)]


def _user_of(*kinds: OrganisationKind) -> Callable[[PortalUser], PortalUser]:
    check = require_kind(*kinds)  # the API's own refusal (403), as an HTML page here

    def user(user: UserDep) -> PortalUser:
        check(user.principal)
        return user

    return user


StartupUser = Annotated[PortalUser, Depends(_user_of("startup"))]
ProviderUser = Annotated[PortalUser, Depends(_user_of("provider"))]
OperatorUser = Annotated[PortalUser, Depends(_user_of("operator"))]
StartupOrOperatorUser = Annotated[PortalUser, Depends(_user_of("startup", "operator"))]


# -- forms ------------------------------------------------------------------------------------


async def read_form(request: Request) -> forms.Form:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidInputError("the portal takes forms as application/x-www-form-urlencoded")
    return forms.Form.parse(await request.body())


async def posted_form(request: Request, user: UserDep, context: AsyncContextDep) -> forms.Form:
    """The posted form, once its CSRF token is the session's (else 403)."""
    form = await read_form(request)
    if not csrf_matches(
        portal_key(context.settings), user.session.session_id, form.get(CSRF_FIELD)
    ):
        raise PermissionDeniedError(
            "the form's CSRF token is missing or wrong (a form from another page?); "
            "reload the page and try again"
        )
    return form


FormDep = Annotated[forms.Form, Depends(posted_form)]


def see_other(path: str) -> RedirectResponse:
    """After a successful POST: see the result with a GET (reloading posts nothing twice)."""
    return RedirectResponse(path, status_code=303)


def notice_for(done: str | None) -> str | None:
    """The notice a `?done=` after a redirect names; nothing for anything else."""
    return NOTICES.get(done or "")


@functools.cache
def municipality_choices() -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(code, name, SNAI class) of the shipped municipalities by name, and code by name."""
    rows = sorted(((r[0], r[1], r[7]) for r in municipality_rows()), key=lambda r: r[1])
    return rows, {name.casefold(): code for code, name, _ in rows}
