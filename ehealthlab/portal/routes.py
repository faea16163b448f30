"""The portal under /portal: `install` mounts every page, and here are those of no one kind
(login, logout, home, the static files) and the not-found page that catches the rest.

Pages are server-rendered HTML with forms that work without script, and a second face of
the JSON API: they call the same route functions of the gateway and the evaluation (kind
checks included, through `require_kind`), so what a form may do is exactly what the API lets
that organisation do. Every POST carries the session's CSRF token; every response carries the
portal's security headers; every error becomes an HTML page (`PortalRoute`), a missing or
ended session the login page. Each kind's pages are in their own module: start-ups'
(startup_routes), providers' (provider_routes), the operator's (operator_routes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.auth import ApiContext, AsyncContextDep, ContextDep, get_principal
from ehealthlab.errors import AuthenticationError, NotFoundError, TooManyAttemptsError
from ehealthlab.gateway import tokens
from ehealthlab.portal import operator_routes, provider_routes, render, startup_routes
from ehealthlab.portal.ended_sessions import end_session
from ehealthlab.portal.routes_common import (
    FormDep,
    UserDep,
    cookie_names,
    notice_for,
    over_tls,
    portal_key,
    portal_router,
    read_form,
    see_other,
    set_cookie,
)
from ehealthlab.portal.session import (
    CSRF_FIELD,
    csrf_matches,
    csrf_token,
    new_login_nonce,
    new_session,
)

_HOME = {"startup": "/portal/devices", "provider": "/portal/patients",
         "operator": "/portal/organisations"}  # fmt: skip
_LOGIN_MINUTES = 60

router = portal_router()
#: the catch-all not-found page, mounted after every other page so that it shadows none
_fallback = portal_router()


def install(app: Any) -> None:
    """Mount the portal on the API application: the catch-all `/portal/{rest:path}` last."""
    app.include_router(router)
    app.include_router(startup_routes.router)
    app.include_router(provider_routes.router)
    app.include_router(operator_routes.router)
    app.include_router(_fallback)


# -- login and logout -------------------------------------------------------------------------


def _login_page(
    request: Request, context: ApiContext, *, error: str | None = None, status: int = 200,
    notice: str | None = None,
) -> Response:  # fmt: skip
    nonce = new_login_nonce()
    csrf = csrf_token(portal_key(context.settings), "login:" + nonce)
    response = render.page("login.j2", status, user=None, csrf=csrf, error=error, notice=notice)
    set_cookie(request, response, cookie_names(request)[1], nonce, _LOGIN_MINUTES * 60)
    return response


@router.get("/login")
def login_form(
    request: Request, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _login_page(request, context, notice=notice_for(done))


@router.post("/login")
async def login(request: Request, context: AsyncContextDep) -> Response:
    """Exchange an API token for a session cookie."""
    form = await read_form(request)
    session_cookie, login_cookie = cookie_names(request)
    nonce = request.cookies.get(login_cookie)
    key = portal_key(context.settings)
    if nonce is None or not csrf_matches(key, "login:" + nonce, form.get(CSRF_FIELD)):
        return _login_page(
            request, context, status=403,
            error="The login form expired or came from elsewhere; try again.",
        )  # fmt: skip
    token = (form.get("token") or "").strip()
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    try:
        await run_in_threadpool(get_principal, request, context, credentials)
    except TooManyAttemptsError as exc:  # counted with the API's failed checks (ratelimit.py)
        page = _login_page(
            request, context, status=429,
            error=f"Too many wrong tokens from this address: try again in {exc.retry_after} "
            "seconds. A correct token is always accepted.",
        )  # fmt: skip
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    except AuthenticationError:
        return _login_page(
            request, context, status=401,
            error="That is not a valid API token: it is unknown, revoked or mistyped.",
        )  # fmt: skip
    lifetime = timedelta(hours=context.settings.portal_session_hours)
    value = new_session(key, tokens.hash_token(token), datetime.now(UTC), lifetime)
    response = see_other("/portal/")
    set_cookie(request, response, session_cookie, value, int(lifetime.total_seconds()))
    response.delete_cookie(login_cookie, path="/", secure=over_tls(request), httponly=True,
                           samesite="strict")  # fmt: skip
    return response


@router.post("/logout")
def logout(request: Request, context: ContextDep, user: UserDep, form: FormDep) -> Response:
    with context.transaction() as conn:
        end_session(conn, user.session, datetime.now(UTC))
    response = see_other("/portal/login?done=bye")
    response.delete_cookie(cookie_names(request)[0], path="/", secure=over_tls(request),
                           httponly=True, samesite="strict")  # fmt: skip
    return response


@router.get("")
@router.get("/")
def home(user: UserDep) -> Response:
    return see_other(_HOME[user.kind])


@router.get("/static/portal.css")
def style() -> Response:
    return Response(render.style_sheet(), media_type="text/css",
                    headers={"Cache-Control": "max-age=300"})  # fmt: skip


@router.get("/static/favicon.svg")
def icon() -> Response:
    return Response(render.FAVICON, media_type="image/svg+xml",
                    headers={"Cache-Control": "max-age=86400"})  # fmt: skip


@_fallback.api_route("/{rest:path}", methods=["GET", "POST"])
def not_found(rest: str) -> Response:
    raise NotFoundError("there is no such page in the portal")
