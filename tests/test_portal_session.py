"""The portal's pure parts: signed session cookies, CSRF tokens, and forms made into the API's
own request bodies; and the order the portal's pages are mounted in."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.routing import iter_route_contexts
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.api.app import create_app
from ehealthlab.errors import InvalidFieldError, InvalidInputError
from ehealthlab.portal import forms
from ehealthlab.portal.session import (
    csrf_matches,
    csrf_token,
    new_session,
    open_session,
    session_key,
)
from ehealthlab.settings import Settings

KEY = session_key(b"a secret of the tests")
OTHER_KEY = session_key(b"another secret")
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
HASH = hashlib.sha256(b"ehl_token").digest()
HOUR = timedelta(hours=1)


def test_a_session_opens_until_it_expires():
    value = new_session(KEY, HASH, NOW, HOUR)
    session = open_session(KEY, value, NOW + HOUR - timedelta(seconds=1))
    assert session is not None and session.token_hash == HASH
    assert open_session(KEY, value, NOW + HOUR) is None


def test_a_session_signed_with_another_key_or_altered_is_refused():
    value = new_session(KEY, HASH, NOW, HOUR)
    assert open_session(OTHER_KEY, value, NOW) is None
    session_id, token_hash, expires, signature = value.split(".")
    later = str(int(expires) + 3600)
    for forged in (
        f"{session_id}.{token_hash}.{later}.{signature}",  # a longer life
        f"x{session_id}.{token_hash}.{expires}.{signature}",  # another session
        f"{session_id}.{token_hash}.{expires}",  # unsigned
        f"{session_id}.{token_hash}.{expires}.{signature}.",
        "",
    ):
        assert open_session(KEY, forged, NOW) is None


@given(st.text(max_size=200))
def test_any_other_cookie_value_is_refused_without_raising(value):
    assert open_session(KEY, value, NOW) is None


def test_sessions_are_distinct_and_hold_no_token():
    first, second = (new_session(KEY, HASH, NOW, HOUR) for _ in range(2))
    assert first != second
    assert "ehl_" not in first


def test_csrf_tokens_belong_to_one_session_and_one_key():
    token = csrf_token(KEY, "session-a")
    assert csrf_matches(KEY, "session-a", token)
    assert not csrf_matches(KEY, "session-b", token)
    assert not csrf_matches(OTHER_KEY, "session-a", token)
    assert not csrf_matches(KEY, "session-a", None)
    assert not csrf_matches(KEY, "session-a", "")


# -- forms ------------------------------------------------------------------------------------


def test_a_form_is_parsed_as_browsers_send_it():
    form = forms.Form.parse(b"a=1&b=&c=x+y&c=%C3%A8&d=%20")
    assert (form.get("a"), form.get("b"), form.text("b")) == ("1", "", None)
    assert form.all("c") == ["x y", "è"]
    assert form.text("d") is None and form.get("missing") is None


def test_a_form_too_large_or_not_utf8_is_refused():
    with pytest.raises(InvalidInputError):
        forms.Form.parse(b"a=" + b"x" * forms.MAX_FORM_BYTES)
    with pytest.raises(InvalidInputError):
        forms.Form.parse(b"a=%FF")


def test_an_enrolment_form_becomes_the_api_body():
    form = forms.Form.parse(
        b"patient_id=0b6f2d4e-3c1a-4f5e-9d7c-2a1b3c4d5e6f&device_id=bpm-3f9a0c1d2e4b5a69"
        b"&municipality=ala+di+stura&start=2026-03-01&end=&plan_bp_systolic=2"
        b"&plan_bp_diastolic=2&plan_spo2="
    )
    body = forms.enrolment_create(form, {"ala di stura": "001003"})
    assert body.municipality == "001003" and body.end is None
    assert body.care_plan == {"bp_systolic": 2, "bp_diastolic": 2}


def test_refused_fields_are_named_and_not_echoed():
    form = forms.Form.parse(b"patient_id=SECRET-ID&device_id=x&municipality=1&start=no")
    with pytest.raises(InvalidFieldError) as refused:
        forms.enrolment_create(form, {})
    fields = [field for field, _ in refused.value.errors]
    assert {"patient_id", "device_id", "municipality", "start", "care_plan"} <= set(fields)
    assert "SECRET-ID" not in str(refused.value)
    with pytest.raises(InvalidFieldError, match="whole number"):
        forms.care_plan(forms.Form.parse(b"plan_spo2=1.5"))


def test_a_mini_pilot_form_takes_every_checked_box_and_chosen_option():
    form = forms.Form.parse(
        b"name=Lanzo&startups=0b6f2d4e-3c1a-4f5e-9d7c-2a1b3c4d5e6f&municipalities=001003"
        b"&municipalities=001128&start=2026-03-01&end=2026-03-31"
    )
    body = forms.mini_pilot_create(form)
    assert body.municipalities == ["001003", "001128"] and len(body.startups) == 1


def test_the_catch_all_not_found_page_is_mounted_after_every_other_page():
    # each kind's pages are a router of their own: one mounted after the catch-all would be
    # shadowed by it, every address of it a "no such page"
    app = create_app(Settings(database_url="postgresql://unused/unused", mqtt_host="unused"))
    portal = [r.path for r in iter_route_contexts(app.routes) if r.path.startswith("/portal")]
    assert portal[-1] == "/portal/{rest:path}" and portal.count("/portal/{rest:path}") == 1
    assert {"/portal/login", "/portal/devices", "/portal/patients", "/portal/report"} < set(portal)
