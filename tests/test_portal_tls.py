"""The portal served over TLS (as behind the reverse proxy): its cookies are Secure and
`__Host-` prefixed; and a logout holds for every API worker. Played over HTTP by FastAPI's
TestClient with an https base URL (the scheme the proxy reports), against the module's real
database and broker."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from api_fixtures import app_client
from fastapi.testclient import TestClient

from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.portal.ended_sessions import end_session, is_ended
from ehealthlab.portal.session import new_session, open_session
from ehealthlab.settings import Settings

#: behind the proxy: the scheme it reports is https
HTTPS: dict[str, Any] = {"base_url": "https://testserver", "follow_redirects": False}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def tls(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings, **HTTPS) as client:
        yield client


def _cookie_header(response: Any, name: str) -> str:
    headers: list[str] = response.headers.get_list("set-cookie")
    (header,) = [h for h in headers if h.startswith(name + "=")]
    return header.lower()


def test_over_tls_the_cookies_are_secure_host_only_httponly_and_strict(tls, settings):
    form = tls.get("/portal/login")
    assert form.status_code == 200
    nonce = _cookie_header(form, "__Host-ehl_login")
    for attribute in ("secure", "httponly", "samesite=strict", "path=/"):
        assert attribute in nonce
    csrf = CSRF.search(form.text)
    assert csrf is not None

    token = bootstrap_operator(settings)["token"]
    login = tls.post("/portal/login", data={"csrf_token": csrf.group(1), "token": token})
    assert login.status_code == 303
    session = _cookie_header(login, "__Host-ehl_session")
    for attribute in ("secure", "httponly", "samesite=strict", "path=/", "max-age=28800"):
        assert attribute in session
    assert "domain=" not in session
    page = tls.get("/portal/organisations")
    assert page.status_code == 200 and "CMTo" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_portal_errors_are_pages_and_the_api_keeps_its_problems(tls):
    tls.cookies.clear()  # no session
    page = tls.get("/portal/no-such-page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert tls.post("/portal/no-such-form", data={}).status_code == 404
    assert tls.get("/portal/devices").headers["location"] == "/portal/login"
    api = tls.get("/api/v1/no-such-route")
    assert api.status_code == 404
    assert api.headers["content-type"] == "application/problem+json"


def test_a_post_that_is_no_form_is_refused(tls):
    answer = tls.post("/portal/login", json={"token": "ehl_x"})
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")


def test_a_logged_out_cookie_is_refused_by_every_worker(settings):
    """Two applications over one store stand for two API workers: logging out on one ends the
    session on the other, even for a copy of the cookie kept from before."""
    token = bootstrap_operator(settings)["token"]
    with (
        app_client(settings, **HTTPS) as first,
        app_client(settings, **HTTPS) as second,
    ):
        form = first.get("/portal/login")
        csrf = CSRF.search(form.text)
        assert csrf is not None
        assert first.post(
            "/portal/login", data={"csrf_token": csrf.group(1), "token": token}
        ).status_code == 303  # fmt: skip
        kept = first.cookies.get("__Host-ehl_session")
        assert kept
        second.cookies.set("__Host-ehl_session", kept)
        assert second.get("/portal/organisations").status_code == 200  # the other worker
        page = first.get("/portal/organisations")
        logout = CSRF.search(page.text)
        assert logout is not None
        assert first.post("/portal/logout", data={"csrf_token": logout.group(1)}).status_code == 303
        second.cookies.set("__Host-ehl_session", kept)  # the copy, replayed
        refused = second.get("/portal/organisations")
        assert refused.status_code == 303
        assert refused.headers["location"] == "/portal/login"


def test_ended_sessions_are_forgotten_once_expired(settings):
    key = b"k" * 32
    now = datetime(2026, 3, 1, 9, tzinfo=UTC)
    hour = timedelta(hours=1)
    first = open_session(key, new_session(key, b"h" * 32, now, hour), now)
    later = now + 2 * hour
    second = open_session(key, new_session(key, b"h" * 32, later, hour), later)
    assert first is not None and second is not None
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        end_session(conn, first, now)
        assert is_ended(conn, first.session_id)
        end_session(conn, second, later)  # the first has expired meanwhile: forgotten
        assert not is_ended(conn, first.session_id) and is_ended(conn, second.session_id)
