"""The web portal in a real browser: Debian's chromium, driven by Playwright, against the API
served by uvicorn on a loopback port with a real PostgreSQL, Mosquitto and ingest worker.

Every page a test opens must log no console error (a Content-Security-Policy violation is
one). Screenshots go to EHEALTHLAB_PORTAL_SCREENSHOTS (docs/ for the documentation), else to
a temporary folder.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect
from portal_fixtures import (
    MUNICIPALITY,
    Cast,
    launch_chromium,
    make_cast,
    screenshot_dir,
)

from ehealthlab.contract.pilot_time import pilot_day
from ehealthlab.demo import LocalServices
from ehealthlab.errors import AuthenticationError
from ehealthlab.gateway import token_registry
from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.settings import Settings
from ehealthlab.stack.ports import free_port

PAGE_POLICY_START = "default-src 'none'"


@pytest.fixture(scope="module")
def services(settings: Settings) -> Iterator[LocalServices]:
    with LocalServices(settings) as running:
        yield running


@pytest.fixture(scope="module")
def cast(settings: Settings, services: LocalServices) -> Cast:
    return make_cast(settings, services.api_url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(screenshot_dir(tmp_path_factory))


@dataclass
class Tab:
    """A browser page of its own context (its own cookies), and what went wrong in it: console
    errors (a CSP violation is one) and failed loads of styles and icons."""

    page: Page
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_tab(browser: Browser, cast: Cast) -> Iterator[Callable[..., Tab]]:
    tabs: list[Tab] = []

    def open_(token: str | None = None, *, javascript: bool = True) -> Tab:
        context = browser.new_context(
            base_url=cast.api_url,
            viewport={"width": 1280, "height": 860},
            java_script_enabled=javascript,
        )
        tab = Tab(context.new_page())
        tab.page.on("console", lambda m: _console(tab, m))
        tab.page.on("response", lambda r: _subresource(tab, r))
        tabs.append(tab)
        if token is not None:
            log_in(tab.page, token)
        return tab

    yield open_
    for tab in tabs:
        tab.page.context.close()
    for tab in tabs:
        # a refused style, a blocked script: anything the CSP stopped is a defect of ours
        assert tab.console_errors == [], tab.console_errors


def _console(tab: Tab, message: ConsoleMessage) -> None:
    # a page answered 403 or 404 on purpose is logged as such: the status is checked instead
    if message.type == "error" and not message.text.startswith(_STATUS_LOGGED):
        tab.console_errors.append(message.text)


def _subresource(tab: Tab, response: Response) -> None:
    if response.request.resource_type != "document" and response.status >= 400:
        tab.console_errors.append(f"{response.status} {response.url}")


_STATUS_LOGGED = "Failed to load resource: the server responded with a status of"


def log_in(page: Page, token: str) -> None:
    page.goto("/portal/login")
    page.fill("#token", token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def shoot(page: Page, shots: Path, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(shots / f"portal-{name}.png"), full_page=full_page)


# -- pages load, and say what the API says ----------------------------------------------------


def test_a_startup_sees_status_last_readings_rejects_and_verdict(open_tab, cast, shots):
    page = open_tab(cast.alpha).page
    assert page.url.endswith("/portal/devices")
    rows = page.locator("#devices tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(cast.cuff)
    expect(rows.first).to_contain_text("Systolic")  # its last reading
    expect(rows.first.locator("td").last).to_have_text("2")  # rejected in the last 24 hours
    shoot(page, shots, "startup-devices")

    page.get_by_role("link", name=cast.cuff).click()
    api = cast.api(cast.alpha)
    device = api.get(f"/api/v1/devices/{cast.cuff}")
    expect(page.locator("dl.facts")).to_contain_text(device["status"].replace("_", " "))
    rejects = api.get(f"/api/v1/devices/{cast.cuff}/rejects")
    assert len(rejects) == 2  # the misspelt unit, systolic and diastolic
    expect(page.locator("#rejects tbody tr")).to_have_count(len(rejects))
    for reject in rejects:
        expect(page.locator("#rejects")).to_contain_text(reject["reason"])
        expect(page.locator("#rejects")).to_contain_text(reject["detail"])
    expect(page.locator("#readings tbody tr")).to_have_count(7)  # 3 + 1 + 3 stored
    expect(page.locator("#readings tbody tr", has_text="Systolic").first).to_contain_text("186")
    verdict = api.get(f"/api/v1/devices/{cast.cuff}/conformance?minutes=1440")["verdict"]
    page.select_option("select[name=window]", "1440")
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#conformance h2")).to_contain_text(verdict.replace("_", " "))
    expect(page.locator("#messages tbody tr")).to_have_count(3)
    shoot(page, shots, "startup-device")


def test_a_startup_sees_only_its_own_devices(open_tab, cast):
    page = open_tab(cast.beta).page
    expect(page.locator("#devices")).to_contain_text(cast.scale)
    expect(page.locator("body")).not_to_contain_text(cast.cuff)
    response = page.goto(f"/portal/devices/{cast.cuff}")
    assert response is not None and response.status == 404
    expect(page.locator("body")).not_to_contain_text("Rotate password")
    # and a provider's session is no way in either
    page = open_tab(cast.provider).page
    response = page.goto("/portal/devices")
    assert response is not None and response.status == 403


def test_a_startup_registers_rotates_and_revokes_a_device(open_tab, cast, shots, settings):
    page = open_tab(cast.alpha).page
    page.select_option("select[name=type]", "pulse_oximeter")
    page.fill("input[name=model]", "OX-7")
    page.fill("input[name=serial]", "A-2")
    page.get_by_role("button", name="Register").click()
    expect(page.locator("h1")).to_contain_text("Registered")
    device_id = page.locator("h1 code").inner_text()
    password = page.locator("#password").inner_text()
    _connects(settings, device_id, password)
    shoot(page, shots, "startup-credentials")

    page.get_by_role("link", name="See the device").click()
    page.get_by_role("button", name="Rotate password").click()
    expect(page.locator("h1")).to_contain_text("New password")
    rotated = page.locator("#password").inner_text()
    assert rotated != password
    _connects(settings, device_id, rotated)
    with pytest.raises(AuthenticationError):
        _connects(settings, device_id, password)

    page.get_by_role("link", name="See the device").click()
    page.get_by_role("button", name="Revoke device").click()
    expect(page.locator(".banner.notice")).to_contain_text("revoked")
    expect(page.get_by_role("button", name="Rotate password")).to_have_count(0)
    assert cast.api(cast.alpha).get(f"/api/v1/devices/{device_id}")["revoked"] is True
    with pytest.raises(AuthenticationError):
        _connects(settings, device_id, rotated)


def _connects(settings: Settings, device_id: str, password: str) -> None:
    host, port = settings.require_mqtt()
    address = BrokerAddress(host, port, device_id, password)
    MqttConnection(address, device_id).connect().close()


def test_a_provider_acknowledges_an_alert(open_tab, cast, shots):
    page = open_tab(cast.provider, javascript=False).page  # no page needs any
    assert page.url.endswith("/portal/patients")
    alerts = page.locator("#alerts tbody tr")
    expect(alerts).to_have_count(1)
    expect(alerts.first).to_contain_text("bp_systolic_high")
    expect(alerts.first).to_contain_text("M.R. 1950")
    shoot(page, shots, "provider")
    alerts.first.get_by_role("button", name="Acknowledge").click()
    expect(page.locator(".banner.notice")).to_contain_text("acknowledged")
    expect(page.locator("#alerts tbody tr")).to_have_count(0)
    acknowledged = cast.api(cast.provider).get("/api/v1/alerts?status=all")
    assert [a["acknowledged_at"] is not None for a in acknowledged] == [True]


def test_a_provider_registers_and_enrols_a_patient(open_tab, cast):
    page = open_tab(cast.provider, javascript=False).page
    page.fill("input[name=identifier]", "VRDLGU60B02L219Y")
    page.fill("input[name=label]", "L.V. 1960")
    page.get_by_role("button", name="Register").click()
    expect(page.locator(".banner.notice")).to_contain_text("registered")
    expect(page.locator("#patients")).to_contain_text("L.V. 1960")

    page.select_option("select[name=patient_id]", label="L.V. 1960")
    page.fill("input[name=device_id]", "scale-0000000000000000")  # nobody's
    page.fill("input[name=municipality]", "Lanzo Torinese")
    page.fill("input[name=plan_body_weight]", "1")
    with page.expect_response(lambda r: r.url.endswith("/portal/enrolments")) as refused:
        page.get_by_role("button", name="Enrol", exact=True).click()
    assert refused.value.status == 404
    expect(page.locator(".banner.error")).to_contain_text("no device")

    page.select_option("select[name=patient_id]", label="L.V. 1960")
    page.fill("input[name=device_id]", cast.scale)  # Beta's scale, lent to the patient
    page.get_by_role("button", name="Enrol", exact=True).click()
    expect(page.locator(".banner.notice")).to_contain_text("enrolled")
    row = page.locator("#patients tr", has_text="L.V. 1960")
    expect(row).to_contain_text(cast.scale)
    expect(row).to_contain_text("Lanzo Torinese")
    enrolments = cast.api(cast.provider).get("/api/v1/enrolments")
    mine = [e for e in enrolments if e["device_id"] == cast.scale]
    assert [(e["municipality"], e["care_plan"]) for e in mine] == [("001128", {"body_weight": 1})]


def _enrolled_patient(cast: Cast, label: str, identifier: str) -> tuple[str, str]:
    """A new patient of the cast's provider, enrolled since yesterday with a new cuff of
    Alpha's, open-ended: (enrolment id, device id)."""
    device = cast.api(cast.alpha).post(
        "/api/v1/devices", {"type": "blood_pressure_monitor", "model": "BP-200", "serial": label}
    )["device_id"]
    care = cast.api(cast.provider)
    patient = care.post("/api/v1/patients", {"identifier": identifier, "label": label})
    yesterday = pilot_day(datetime.now(UTC)) - timedelta(days=1)
    enrolment = care.post("/api/v1/enrolments", {
        "patient_id": patient["id"], "device_id": device, "municipality": MUNICIPALITY,
        "start": yesterday.isoformat(), "end": None, "care_plan": {"bp_systolic": 1},
    })  # fmt: skip
    return enrolment["id"], device


def test_a_provider_ends_an_enrolment_and_lends_the_device_again(open_tab, cast, shots):
    enrolment_id, device = _enrolled_patient(cast, "E.N. 1945", "NDRNZE45C03L219Z")
    page = open_tab(cast.provider, javascript=False).page
    line = page.locator(f"#enrolment-{enrolment_id}")
    expect(line).to_have_class(re.compile(r"\bactive\b"))
    line.get_by_role("button", name="End enrolment").click()
    expect(page.locator(".banner.notice")).to_contain_text("ends today")
    expect(page.locator("#patients .enrolment.active", has_text=device)).to_have_count(0)
    expect(line).to_contain_text("ends today")
    expect(line.get_by_role("button", name="End enrolment")).to_have_count(0)
    today = pilot_day(datetime.now(UTC))
    ended = cast.api(cast.provider).get(f"/api/v1/enrolments/{enrolment_id}")
    assert ended["end"] == today.isoformat()  # the API's end: today is its last day

    # so the device serves another patient from tomorrow, not today
    page.fill("input[name=identifier]", "BNCNNA52D44L219W")
    page.fill("input[name=label]", "A.B. 1952")
    page.get_by_role("button", name="Register").click()
    expect(page.locator(".banner.notice")).to_contain_text("registered")
    for first_day, status in ((today, 409), (today + timedelta(days=1), 303)):
        page.select_option("select[name=patient_id]", label="A.B. 1952")
        page.fill("input[name=device_id]", device)
        page.fill("input[name=municipality]", "Lanzo Torinese")
        page.fill("input[name=start]", first_day.isoformat())
        page.fill("input[name=plan_bp_systolic]", "2")
        with page.expect_response(lambda r: r.url.endswith("/portal/enrolments")) as answer:
            page.get_by_role("button", name="Enrol", exact=True).click()
        assert answer.value.status == status
        if status == 409:
            expect(page.locator("body")).to_contain_text("one patient at a time")
            page.goto("/portal/patients")
    expect(page.locator(".banner.notice")).to_contain_text("enrolled")
    lent = page.locator("#patients tr", has_text="A.B. 1952").locator(".enrolment")
    expect(lent).to_contain_text(device)
    expect(lent).to_contain_text("not started")  # tomorrow's: nothing to end yet
    expect(lent.get_by_role("button", name="End enrolment")).to_have_count(0)
    shoot(page, shots, "provider-enrolment-ended")


def test_a_forged_post_cannot_end_an_enrolment(open_tab, cast):
    enrolment_id, _ = _enrolled_patient(cast, "F.P. 1948", "FRGPRV48E05L219V")
    page = open_tab(cast.provider).page
    end = f"{cast.api_url}/portal/enrolments/{enrolment_id}/end"
    forged = f"<form method=post action='{end}'><button>Win a prize</button></form>"
    # same site: the session cookie goes along, the missing CSRF token stops it
    elsewhere = f"http://127.0.0.1:{free_port()}/forged"
    page.route(elsewhere, lambda route: route.fulfill(content_type="text/html", body=forged))
    page.goto(elsewhere)
    with page.expect_response(end) as answer:
        page.get_by_role("button", name="Win a prize").click()
    assert answer.value.status == 403
    expect(page.locator("body")).to_contain_text("CSRF token is missing or wrong")
    assert cast.api(cast.provider).get(f"/api/v1/enrolments/{enrolment_id}")["end"] is None


def test_another_provider_cannot_end_an_enrolment(open_tab, cast):
    enrolment_id, _ = _enrolled_patient(cast, "O.P. 1939", "THRPRV39H06L219U")
    other = cast.api(cast.operator).post(
        "/api/v1/organisations", {"kind": "provider", "name": "ASL TO3"}
    )
    page = open_tab(other["token"]).page
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    # the other provider's own valid session and CSRF token: the enrolment is not one of its
    # patients', so it is as missing as an unknown or malformed id — a page saying so, no 500
    for target in (enrolment_id, str(uuid.uuid4()), "not-an-id"):
        answer = page.request.post(
            f"{cast.api_url}/portal/enrolments/{target}/end", form={"csrf_token": token}
        )
        assert answer.status == 404, (target, answer.status)
        assert "no such enrolment" in answer.text()
    # and a start-up's session is refused by kind, as the API refuses its token
    startup = open_tab(cast.alpha).page
    token = startup.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    answer = startup.request.post(
        f"{cast.api_url}/portal/enrolments/{enrolment_id}/end", form={"csrf_token": token}
    )
    assert answer.status == 403
    assert cast.api(cast.provider).get(f"/api/v1/enrolments/{enrolment_id}")["end"] is None


def test_the_operator_admits_defines_a_mini_pilot_and_reads_the_report(open_tab, cast, shots):
    page = open_tab(cast.operator).page
    assert page.url.endswith("/portal/organisations")
    for name in ("Alpha Devices", "Beta Sensors", "ASL TO4"):
        expect(page.locator("#organisations")).to_contain_text(name)
    page.select_option("select[name=kind]", "startup")
    page.fill("input[name=name]", "Gamma Health")
    page.get_by_role("button", name="Admit").click()
    token = page.locator("#token").inner_text()
    assert cast.api(token).get("/api/v1/me")["name"] == "Gamma Health"
    shoot(page, shots, "operator-admitted")

    page.get_by_role("navigation").get_by_role("link", name="Organisations").click()
    shoot(page, shots, "operator-organisations")
    page.get_by_role("navigation").get_by_role("link", name="Mini-pilots").click()
    page.fill("input[name=name]", "Valli di Lanzo, spring")
    page.get_by_label("Alpha Devices").check()
    page.select_option("select[name=municipalities]", ["001003", "001128"])
    page.fill("input[name=start]", "2026-03-01")
    page.fill("input[name=end]", "2026-05-31")
    page.get_by_role("button", name="Define").click()
    expect(page.locator(".banner.notice")).to_contain_text("defined")
    expect(page.locator("#mini-pilots")).to_contain_text("Ala di Stura")
    pilots = cast.api(cast.operator).get("/api/v1/mini-pilots")
    assert [(p["name"], p["startups"]) for p in pilots] == [
        ("Valli di Lanzo, spring", [cast.alpha_id])
    ]
    shoot(page, shots, "operator-mini-pilots")

    page.get_by_role("navigation").get_by_role("link", name="Pilot report").click()
    shoot(page, shots, "operator-report-form")
    with page.expect_response(lambda r: "/portal/report/view" in r.url) as shown:
        page.get_by_role("button", name="Show the report").click()
    assert shown.value.status == 200
    assert "style-src 'unsafe-inline'" in shown.value.headers["content-security-policy"]
    assert "script" not in shown.value.headers["content-security-policy"]
    expect(page.locator("h1").first).to_be_visible()
    expect(page.locator("body")).to_contain_text("Headline")
    shoot(page, shots, "operator-report", full_page=False)  # its first screen


# -- what the session and the forms refuse ----------------------------------------------------


def test_a_forged_form_post_is_refused(open_tab, cast):
    page = open_tab(cast.alpha).page
    revoke = f"{cast.api_url}/portal/devices/{cast.cuff}/revoke"
    forged = f"<form method=post action='{revoke}'><button>Win a prize</button></form>"
    # same site (another port of 127.0.0.1): the cookie goes along; the missing token stops it
    elsewhere = f"http://127.0.0.1:{free_port()}/forged"
    page.route(elsewhere, lambda route: route.fulfill(content_type="text/html", body=forged))
    page.goto(elsewhere)
    with page.expect_response(revoke) as answer:
        page.get_by_role("button", name="Win a prize").click()
    assert answer.value.status == 403
    expect(page.locator("body")).to_contain_text("CSRF token is missing or wrong")

    # the portal's own form with a token that is not this session's
    page.goto(f"/portal/devices/{cast.cuff}")
    other = open_tab(cast.beta).page.locator("input[name=csrf_token]").first.get_attribute("value")
    page.locator("form[action$='/rotate'] input[name=csrf_token]").evaluate(
        "(input, value) => { input.value = value; }", other
    )
    with page.expect_response(lambda r: r.url.endswith("/rotate")) as answer:
        page.get_by_role("button", name="Rotate password").click()
    assert answer.value.status == 403

    # another site: SameSite=Strict keeps the cookie home, so it is no session at all
    cross = "http://forged.invalid/"
    page.route(cross, lambda route: route.fulfill(content_type="text/html", body=forged))
    page.goto(cross)
    page.get_by_role("button", name="Win a prize").click()
    expect(page).to_have_url(re.compile(r"/portal/login$"))
    assert cast.api(cast.alpha).get(f"/api/v1/devices/{cast.cuff}")["revoked"] is False


def test_the_session_cookie_and_the_security_headers(open_tab, cast):
    tab = open_tab()
    response = tab.page.goto("/portal/login")
    assert response is not None
    assert response.headers["content-security-policy"].startswith(PAGE_POLICY_START)
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    log_in(tab.page, cast.alpha)
    (session,) = [c for c in tab.page.context.cookies() if c["name"] == "ehl_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["secure"] is False  # plain HTTP here; test_portal_tls checks TLS
    assert "ehl_" not in session["value"]  # not the API token
    assert tab.page.evaluate("document.cookie") == ""  # no script can read it


def test_logging_out_ends_the_session(open_tab, cast, shots):
    tab = open_tab()
    tab.page.goto("/portal/login")
    shoot(tab.page, shots, "login")
    log_in(tab.page, cast.alpha)
    context = tab.page.context
    cookies = context.cookies()
    tab.page.get_by_role("button", name="Log out").click()
    expect(tab.page).to_have_url(re.compile(r"/portal/login\?done=bye$"))
    expect(tab.page.locator(".banner.notice")).to_contain_text("logged out")
    tab.page.goto("/portal/devices")
    expect(tab.page).to_have_url(re.compile(r"/portal/login$"))
    context.add_cookies(cookies)  # a copy of the cookie kept from before: still ended
    tab.page.goto("/portal/devices")
    expect(tab.page).to_have_url(re.compile(r"/portal/login$"))


def test_revoking_the_api_token_ends_its_sessions(open_tab, cast, settings):
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        row, token = token_registry.create_token(conn, uuid.UUID(cast.alpha_id), "member", "portal")
    page = open_tab(token).page
    expect(page.locator("#devices")).to_contain_text(cast.cuff)
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        assert token_registry.revoke_token(conn, row.id)
    page.reload()
    expect(page).to_have_url(re.compile(r"/portal/login$"))


def test_a_wrong_token_is_refused_at_login(open_tab, cast):
    page = open_tab().page
    page.goto("/portal/login")
    page.fill("#token", "ehl_" + "x" * 43)
    with page.expect_response(lambda r: r.url.endswith("/portal/login")) as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 401
    expect(page.locator(".banner.error")).to_contain_text("not a valid API token")
    expect(page.locator("#token")).to_be_visible()
