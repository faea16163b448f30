"""The portal's pages under /portal: server-rendered HTML, forms that work without script.

Handlers are a second face of the JSON API: they call the same route functions of the
gateway and the evaluation (kind checks included, through `require_kind`), so what a form
may do is exactly what the API lets that organisation do. Every POST carries the session's
CSRF token; every response carries the portal's security headers; every error of the tree
becomes an HTML page (`PortalRoute`), a missing or ended session the login page.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ehealthlab.api.auth import (
    ApiContext,
    AsyncContextDep,
    ContextDep,
    Principal,
    get_principal,
    require_kind,
)
from ehealthlab.api.problems import status_of
from ehealthlab.contract.topics import is_valid_device_id
from ehealthlab.errors import (
    AuthenticationError,
    EhealthlabError,
    InvalidFieldError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    TooManyAttemptsError,
)
from ehealthlab.evaluation import routes as evaluation
from ehealthlab.evaluation.dataset import POPULATIONS
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.service import check_request
from ehealthlab.gateway import (
    alert_routes,
    device_routes,
    organisation_routes,
    patient_routes,
    registry,
    tokens,
)
from ehealthlab.gateway.registry import OrganisationKind
from ehealthlab.portal import forms, render
from ehealthlab.portal.ended_sessions import end_session, is_ended
from ehealthlab.portal.session import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SECURE_LOGIN_COOKIE,
    SECURE_SESSION_COOKIE,
    SESSION_COOKIE,
    Session,
    csrf_matches,
    csrf_token,
    new_login_nonce,
    new_session,
    open_session,
    session_key,
)
from ehealthlab.settings import Settings
from ehealthlab.store.readings import latest_readings
from ehealthlab.store.reference import municipality_rows
from ehealthlab.store.rejections import rejection_counts

log = logging.getLogger(__name__)

#: the windows a start-up may judge a device's conformance over, in minutes
CONFORMANCE_WINDOWS = {60: "the last hour", 1440: "the last 24 hours", 10080: "the last 7 days"}
#: what a redirect after a successful form says (only these: nothing typed is echoed)
NOTICES = {
    "revoked": "The device is revoked: it can no longer connect or publish. Its readings stay.",
    "patient": "The patient is registered.",
    "enrolled": "The patient is enrolled with the device.",
    "acknowledged": "The alert is acknowledged.",
    "mini-pilot": "The mini-pilot is defined.",
    "bye": "You are logged out.",
}
_HOME = {"startup": "/portal/devices", "provider": "/portal/patients",
         "operator": "/portal/organisations"}  # fmt: skip
_LOGIN_MINUTES = 60
#: readings looked up per device for the list, whose newest measurement time is shown
LAST_READINGS = 8
#: the report form proposes the last 30 days, today included
REPORT_DAYS = timedelta(days=30)
#: the fleet list counts each device's rejections over this look-back
REJECTS_SINCE = timedelta(hours=24)


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


router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)


def install(app: Any) -> None:
    """Mount the portal on the API application."""
    app.include_router(router)


# -- sessions ---------------------------------------------------------------------------------


def _key(settings: Settings) -> bytes:
    secret = settings.portal_secret
    return session_key(
        secret.get_secret_value().encode() if secret else settings.require_patient_key()
    )


def _over_tls(request: Request) -> bool:
    return request.url.scheme == "https"


def _cookie_names(request: Request) -> tuple[str, str]:
    """(session, login nonce) cookie names: `__Host-` ones over TLS, where they are Secure."""
    if _over_tls(request):
        return SECURE_SESSION_COOKIE, SECURE_LOGIN_COOKIE
    return SESSION_COOKIE, LOGIN_COOKIE


def _set_cookie(request: Request, response: Response, name: str, value: str, seconds: int) -> None:
    response.set_cookie(
        name, value, max_age=seconds, path="/", secure=_over_tls(request), httponly=True,
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
    key = _key(context.settings)
    value = request.cookies.get(_cookie_names(request)[0])
    session = open_session(key, value, datetime.now(UTC)) if value else None
    if session is None:
        raise AuthenticationError("log in with your API token")
    with context.transaction() as conn:
        if is_ended(conn, session.session_id):  # logged out, on whichever worker
            raise AuthenticationError("log in with your API token")
        owner = registry.authenticate(conn, session.token_hash)
        organisation = (
            None if owner is None else registry.get_organisation(conn, owner.organisation_id)
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


async def _read_form(request: Request) -> forms.Form:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidInputError("the portal takes forms as application/x-www-form-urlencoded")
    return forms.Form.parse(await request.body())


async def posted_form(request: Request, user: UserDep, context: AsyncContextDep) -> forms.Form:
    """The posted form, once its CSRF token is the session's (else 403)."""
    form = await _read_form(request)
    if not csrf_matches(_key(context.settings), user.session.session_id, form.get(CSRF_FIELD)):
        raise PermissionDeniedError(
            "the form's CSRF token is missing or wrong (a form from another page?); "
            "reload the page and try again"
        )
    return form


FormDep = Annotated[forms.Form, Depends(posted_form)]


def _see(path: str) -> RedirectResponse:
    """After a successful POST: see the result with a GET (reloading posts nothing twice)."""
    return RedirectResponse(path, status_code=303)


def _notice(done: str | None) -> str | None:
    return NOTICES.get(done or "")


# -- login and logout -------------------------------------------------------------------------


def _login_page(
    request: Request, context: ApiContext, *, error: str | None = None, status: int = 200,
    notice: str | None = None,
) -> Response:  # fmt: skip
    nonce = new_login_nonce()
    response = render.page(
        "login.j2", status, user=None, csrf=csrf_token(_key(context.settings), "login:" + nonce),
        error=error, notice=notice,
    )  # fmt: skip
    _set_cookie(request, response, _cookie_names(request)[1], nonce, _LOGIN_MINUTES * 60)
    return response


@router.get("/login")
def login_form(
    request: Request, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _login_page(request, context, notice=_notice(done))


@router.post("/login")
async def login(request: Request, context: AsyncContextDep) -> Response:
    """Exchange an API token for a session cookie."""
    form = await _read_form(request)
    session_cookie, login_cookie = _cookie_names(request)
    nonce = request.cookies.get(login_cookie)
    key = _key(context.settings)
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
    response = _see("/portal/")
    _set_cookie(request, response, session_cookie, value, int(lifetime.total_seconds()))
    response.delete_cookie(login_cookie, path="/", secure=_over_tls(request), httponly=True,
                           samesite="strict")  # fmt: skip
    return response


@router.post("/logout")
def logout(request: Request, context: ContextDep, user: UserDep, form: FormDep) -> Response:
    with context.transaction() as conn:
        end_session(conn, user.session, datetime.now(UTC))
    response = _see("/portal/login?done=bye")
    response.delete_cookie(_cookie_names(request)[0], path="/", secure=_over_tls(request),
                           httponly=True, samesite="strict")  # fmt: skip
    return response


@router.get("")
@router.get("/")
def home(user: UserDep) -> Response:
    return _see(_HOME[user.kind])


@router.get("/static/portal.css")
def style() -> Response:
    return Response(render.style_sheet(), media_type="text/css",
                    headers={"Cache-Control": "max-age=300"})  # fmt: skip


@router.get("/static/favicon.svg")
def icon() -> Response:
    return Response(render.FAVICON, media_type="image/svg+xml",
                    headers={"Cache-Control": "max-age=86400"})  # fmt: skip


# -- start-ups: devices -----------------------------------------------------------------------


def _devices_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None, notice: str | None = None,
) -> Response:  # fmt: skip
    devices = device_routes.list_devices(user.principal, context)
    with context.transaction() as conn:
        ids = [d.device_id for d in devices]
        latest = latest_readings(conn, ids, LAST_READINGS)
        rejected = rejection_counts(conn, ids, datetime.now(UTC) - REJECTS_SINCE)
        owners = (
            {o.id: o.name for o in registry.list_organisations(conn)}
            if user.kind == "operator" else {}
        )  # fmt: skip
    return render.page(
        "devices.j2", status_of(error) if error else 200, user=user, devices=devices,
        latest=latest, rejected=rejected, owners=owners, form=form, error=error, notice=notice,
    )  # fmt: skip


@router.get("/devices")
def devices(
    user: StartupOrOperatorUser, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _devices_page(user, context, notice=_notice(done))


@router.post("/devices")
def register_device(user: StartupUser, form: FormDep, context: ContextDep) -> Response:
    try:
        body = forms.device_create(form)
        credentials = device_routes.register_device(user.principal, body, context)
    except (InvalidInputError, NotFoundError) as exc:
        return _devices_page(user, context, error=exc, form=form)
    return render.page("credentials.j2", 201, user=user, credentials=credentials, rotated=False)


def _device_id(device_id: str) -> str:
    if not is_valid_device_id(device_id):  # as the API: no lookup for what is no device id
        raise NotFoundError("no such device")
    return device_id


@router.get("/devices/{device_id}")
def device(
    user: StartupOrOperatorUser,
    context: ContextDep,
    device_id: Annotated[str, Depends(_device_id)],
    window: Annotated[int, Query()] = 60,
    done: Annotated[str | None, Query()] = None,
) -> Response:
    caller = user.principal
    minutes = window if window in CONFORMANCE_WINDOWS else 60
    shown = device_routes.get_device(caller, device_id, context)
    conformance = device_routes.device_conformance(
        caller=caller, device_id=device_id, context=context, minutes=minutes, from_=None, to=None
    )
    rejects = device_routes.device_rejects(caller, device_id, context, limit=50)
    messages = device_routes.device_messages(caller, device_id, context, limit=10)
    with context.transaction() as conn:
        readings = latest_readings(conn, [device_id], 20).get(device_id, [])
    return render.page(
        "device.j2", user=user, device=shown, conformance=conformance, rejects=rejects,
        messages=messages, readings=readings, window=minutes, windows=CONFORMANCE_WINDOWS,
        notice=_notice(done),
    )  # fmt: skip


@router.post("/devices/{device_id}/rotate")
def rotate(
    user: StartupUser,
    form: FormDep,
    context: ContextDep,
    device_id: Annotated[str, Depends(_device_id)],
) -> Response:
    credentials = device_routes.rotate_credentials(user.principal, device_id, context)
    return render.page("credentials.j2", user=user, credentials=credentials, rotated=True)


@router.post("/devices/{device_id}/revoke")
def revoke(
    user: StartupUser,
    form: FormDep,
    context: ContextDep,
    device_id: Annotated[str, Depends(_device_id)],
) -> Response:
    device_routes.revoke_device(user.principal, device_id, context)
    return _see(f"/portal/devices/{device_id}?done=revoked")


# -- providers: patients, enrolments, alerts --------------------------------------------------


@functools.cache
def _municipalities() -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(code, name, SNAI class) of the shipped municipalities by name, and code by name."""
    rows = sorted(((r[0], r[1], r[7]) for r in municipality_rows()), key=lambda r: r[1])
    return rows, {name.casefold(): code for code, name, _ in rows}


def _patients_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None, notice: str | None = None,
) -> Response:  # fmt: skip
    patients = patient_routes.list_patients(user.principal, context)
    alerts = alert_routes.list_alerts(user.principal, context, status="open", limit=200)
    municipalities, _ = _municipalities()
    return render.page(
        "patients.j2", status_of(error) if error else 200, user=user, patients=patients,
        labels={p.id: p.label for p in patients}, alerts=alerts,
        municipalities=municipalities, names={code: name for code, name, _ in municipalities},
        today=datetime.now(UTC).date(), form=form, error=error, notice=notice,
    )  # fmt: skip


@router.get("/patients")
def patients(
    user: ProviderUser, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _patients_page(user, context, notice=_notice(done))


@router.post("/patients")
def register_patient(user: ProviderUser, form: FormDep, context: ContextDep) -> Response:
    try:
        patient_routes.register_patient(user.principal, forms.patient_create(form), context)
    except InvalidInputError as exc:
        return _patients_page(user, context, error=exc, form=form)
    return _see("/portal/patients?done=patient")


@router.post("/enrolments")
def enrol(user: ProviderUser, form: FormDep, context: ContextDep) -> Response:
    try:
        body = forms.enrolment_create(form, _municipalities()[1])
        patient_routes.enrol(user.principal, body, context)
    except (InvalidInputError, NotFoundError) as exc:
        return _patients_page(user, context, error=exc, form=form)
    return _see("/portal/patients?done=enrolled")


def _alert_id(alert_id: str) -> UUID:
    try:
        return UUID(alert_id)
    except ValueError:
        raise NotFoundError("no such alert") from None


@router.post("/alerts/{alert_id}/ack")
def acknowledge(
    user: ProviderUser,
    form: FormDep,
    context: ContextDep,
    alert_id: Annotated[UUID, Depends(_alert_id)],
) -> Response:
    alert_routes.acknowledge_alert(user.principal, alert_id, context)
    return _see("/portal/patients?done=acknowledged")


# -- the operator: organisations, mini-pilots, the report -------------------------------------


def _organisations_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None,
) -> Response:  # fmt: skip
    organisations = organisation_routes.list_organisations(user.principal, context)
    return render.page(
        "organisations.j2", status_of(error) if error else 200, user=user,
        organisations=organisations, form=form, error=error,
    )  # fmt: skip


@router.get("/organisations")
def organisations(user: OperatorUser, context: ContextDep) -> Response:
    return _organisations_page(user, context)


@router.post("/organisations")
def admit(user: OperatorUser, form: FormDep, context: ContextDep) -> Response:
    try:
        created = organisation_routes.create_organisation(
            user.principal, forms.organisation_create(form), context
        )
    except InvalidInputError as exc:
        return _organisations_page(user, context, error=exc, form=form)
    return render.page("admitted.j2", 201, user=user, created=created)


def _mini_pilots_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None, notice: str | None = None,
) -> Response:  # fmt: skip
    organisations = organisation_routes.list_organisations(user.principal, context)
    pilots = evaluation.list_mini_pilots(user.principal, context)
    municipalities, _ = _municipalities()
    return render.page(
        "mini_pilots.j2", status_of(error) if error else 200, user=user, pilots=pilots,
        startups=[o for o in organisations if o.kind == "startup"],
        names={o.id: o.name for o in organisations}, municipalities=municipalities,
        municipality_names={code: name for code, name, _ in municipalities},
        form=form, error=error, notice=notice,
    )  # fmt: skip


@router.get("/mini-pilots")
def mini_pilots(
    user: OperatorUser, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _mini_pilots_page(user, context, notice=_notice(done))


@router.post("/mini-pilots")
def define_mini_pilot(user: OperatorUser, form: FormDep, context: ContextDep) -> Response:
    try:
        evaluation.create_mini_pilot(user.principal, forms.mini_pilot_create(form), context)
    except InvalidInputError as exc:
        return _mini_pilots_page(user, context, error=exc, form=form)
    return _see("/portal/mini-pilots?done=mini-pilot")


@router.get("/report")
def report_form(user: OperatorUser) -> Response:
    today = datetime.now(UTC).date()
    return render.page(
        "report.j2", user=user, start=today - REPORT_DAYS, end=today + timedelta(days=1),
        populations=POPULATIONS,
    )  # fmt: skip


@router.get("/report/view")
def report(
    user: OperatorUser,
    context: ContextDep,
    start: Annotated[date, Query(alias="from")],
    end: Annotated[date, Query(alias="to")],
    population: Annotated[Literal["real", "simulated"], Query()] = "real",
) -> Response:
    """The pilot report (docs/report.md), computed now from one snapshot of the store."""
    period = check_request(start, end, "all", population)
    if (end - start).days > 366:
        raise InvalidFieldError("to", "a report covers at most a year")
    # matplotlib loads only for the report, as in `ehealthlab evaluate --format html`
    from ehealthlab.evaluation.report import build_report  # noqa: PLC0415

    try:
        with context.pool.connection() as conn:
            data = fetch_dataset(conn, period, population)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"the database is unavailable ({str(exc).strip().splitlines()[0]})"
        ) from exc
    html = build_report(data, context.settings)
    return render.secure(
        Response(html, media_type="text/html; charset=utf-8"), policy=render.REPORT_POLICY
    )


@router.api_route("/{rest:path}", methods=["GET", "POST"])
def not_found(rest: str) -> Response:
    raise NotFoundError("there is no such page in the portal")
