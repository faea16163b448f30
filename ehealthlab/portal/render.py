"""Pages from templates, the portal's security headers, and its error pages: the HTML
rendering of the platform's one error tree (as problems.py is the JSON one)."""

from __future__ import annotations

import functools
from datetime import date, datetime
from http import HTTPStatus
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ehealthlab.api.problems import status_of
from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.errors import AuthenticationError, EhealthlabError
from ehealthlab.portal.session import CSRF_FIELD

LOGIN_PATH = "/portal/login"

#: the portal's own pages: its style sheet, nothing inline, no script at all
PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: the pilot report holds its own CSS and SVG figures (docs/report.md): inline styles, still
#: no script, no form, nothing fetched
REPORT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _when(value: datetime | None) -> str:
    """A time for people: the pilot's zone (Europe/Rome), to the minute."""
    if value is None:
        return "—"
    return value.astimezone(PILOT_ZONE).strftime("%Y-%m-%d %H:%M")


def _day(value: date | None) -> str:
    return "open" if value is None else value.isoformat()


def _metric(code: str) -> str:
    metric = METRICS.get(code)
    return metric.display if metric else code


def _unit(code: str) -> str:
    metric = METRICS.get(code)
    return metric.unit if metric else ""


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("ehealthlab.portal", "templates"),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, day=_day, metric=_metric, unit=_unit, number=_number)
    env.globals.update(
        csrf_field=CSRF_FIELD, metrics=METRICS, device_types=DEVICE_TYPES, zone=str(PILOT_ZONE)
    )
    return env


#: the portal's icon (browsers ask for one; without it every page logs a 404)
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#0b5c8a"/>'
    '<path d="M3 9h3l1.5-4 2 7 1.5-3H13" fill="none" stroke="#fff" stroke-width="1.6"/></svg>'
)


@functools.cache
def style_sheet() -> str:
    """The portal's one style sheet (package data)."""
    return (resources.files("ehealthlab.portal") / "portal.css").read_text(encoding="utf-8")


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page of the portal. `context` needs `user` (None before login); `notice` and
    `error` are optional banners."""
    context.setdefault("notice", None)
    context.setdefault("error", None)
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, exc: EhealthlabError) -> Response:
    """What a portal request that failed shows: the login page for a missing or ended
    session, else a page saying what went wrong (never a trace)."""
    if isinstance(exc, AuthenticationError):
        return RedirectResponse(LOGIN_PATH, status_code=303)
    status = status_of(exc)
    detail = (
        "the server could not complete the request; the operator has the details"
        if status == 500
        else str(exc)
    )
    return page(
        "error.j2", status, user=None, title=HTTPStatus(status).phrase, detail=detail,
        path=request.url.path,
    )  # fmt: skip


def secure(response: Response, *, policy: str = PAGE_POLICY) -> Response:
    """The headers every portal response carries: a Content-Security-Policy, no framing, no
    sniffing, no referrer leaving the site, nothing personal kept in caches."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", policy)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "same-origin"
    headers.setdefault("Cache-Control", "no-store")
    return response
