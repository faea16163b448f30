"""Paging the operator (gateway/pager.py): a page raised with the broker's drops it reports,
sent to a real HTTP webhook on loopback exactly once, kept and tried again while the webhook
refuses it, never sent twice by two pagers, and a backlog sent oldest first."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from api_fixtures import app_client
from conftest import settings_for
from pydantic import SecretStr
from webhook_receiver import Receiver, webhook_receiver

from ehealthlab.errors import ConfigurationError
from ehealthlab.gateway import broker_watch
from ehealthlab.gateway.operator_pages import Page
from ehealthlab.gateway.pager import (
    COALESCE_S,
    PageDeliveryError,
    Pager,
    Webhook,
    deliver_due,
    raise_page,
)
from ehealthlab.store.db import Connection

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def conn(store_url: str):
    with psycopg.connect(store_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def receiver():
    with webhook_receiver() as r:
        yield r


def pages_kept(conn: Connection) -> list[tuple]:
    return conn.execute(
        "SELECT event, details, attempts, last_error, sent_at IS NOT NULL FROM operator_pages"
        " ORDER BY id"
    ).fetchall()


def test_the_brokers_drops_raise_one_page_each_and_nothing_else_does(conn: Connection) -> None:
    # minutes apart: drops within COALESCE_S of a waiting page join it (tested below)
    for value, minutes in [(b"0", 0), (b"0", 1), (b"7", 2), (b"7", 3), (b"9", 14), (b"x", 15)]:
        broker_watch.record(conn, value, T0 + timedelta(minutes=minutes))
    assert pages_kept(conn) == [
        ("broker_drops", {"dropped": 7, "dropped_since_broker_start": 7,
                          "runbook": "docs/reliability-faults.md, section 3"}, 0, None, False),
        ("broker_drops", {"dropped": 2, "dropped_since_broker_start": 9,
                          "runbook": "docs/reliability-faults.md, section 3"}, 0, None, False),
    ]  # fmt: skip
    # a page is raised with the drop it reports: one transaction, so never one without the other
    assert conn.execute(
        "SELECT count(*) FROM broker_drops b JOIN operator_pages p ON p.raised_at = b.observed_at"
        " WHERE b.dropped > 0"
    ).fetchone() == (2,)


def test_a_page_is_sent_once_with_its_figures(conn: Connection, receiver: Receiver) -> None:
    broker_watch.record(conn, b"5002", T0)
    webhook = Webhook(receiver.url)
    assert deliver_due(conn, webhook) == 1
    assert deliver_due(conn, webhook) == 0  # sent: never again
    assert len(receiver.bodies) == 1
    (body,) = receiver.bodies
    assert body["source"] == "ehealthlab"
    assert "dropped 5,002 message(s)" in body["text"]
    assert "raised 2026-12-07T09:00:00+00:00" in body["text"]
    ((page),) = body["pages"]
    assert page["event"] == "broker_drops"
    assert page["details"]["dropped"] == 5002
    assert datetime.fromisoformat(page["raised_at"]) == T0
    assert pages_kept(conn)[0][2:] == (1, None, True)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(500, "HTTP 500"), (404, "HTTP 404"), ("redirect", "HTTP 302")],
)
def test_a_refused_page_is_kept_tried_again_later_and_then_sent(
    conn: Connection, receiver: Receiver, answer: int | str, reason: str
) -> None:
    raise_page(conn, Page("test_page", "dropped 3", {"dropped": 3}), T0)
    receiver.answers = [answer]
    webhook = Webhook(receiver.url)
    assert deliver_due(conn, webhook, retry_base_s=60, retry_cap_s=600) == 0
    (row,) = conn.execute(
        "SELECT attempts, last_error, sent_at,"
        " extract(epoch FROM next_attempt_at - statement_timestamp())"
        " FROM operator_pages"
    ).fetchall()
    attempts, last_error, sent_at, wait_s = row
    assert (attempts, sent_at) == (1, None)
    assert last_error.startswith(f"the webhook answered {reason}")
    assert 50 < wait_s <= 60  # the first retry's delay
    assert deliver_due(conn, webhook) == 0  # not due yet: not even tried
    assert len(receiver.bodies) == 1
    # a minute later, the webhook works again (redirects are not followed: one POST each)
    conn.execute("UPDATE operator_pages SET next_attempt_at = now()")
    assert deliver_due(conn, webhook, retry_base_s=60, retry_cap_s=600) == 1
    assert len(receiver.bodies) == 2
    assert receiver.bodies[0]["pages"] == receiver.bodies[1]["pages"]
    assert pages_kept(conn)[0][2:] == (2, None, True)


def test_each_failure_doubles_the_wait_up_to_the_cap(conn: Connection) -> None:
    raise_page(conn, Page("test_page", "dropped 1"), T0)
    waits = []
    for _ in range(5):
        conn.execute("UPDATE operator_pages SET next_attempt_at = now()")
        assert deliver_due(conn, Refusing(), retry_base_s=10, retry_cap_s=50) == 0
        (wait,) = conn.execute(
            "SELECT extract(epoch FROM next_attempt_at - statement_timestamp()) FROM operator_pages"
        ).fetchone()
        waits.append(round(float(wait), -1))
    assert waits == [10, 20, 40, 50, 50]


class Refusing:
    """A webhook that always refuses (what deliver_due does then is what is tested)."""

    def post(self, body: bytes) -> None:
        raise PageDeliveryError("the webhook answered HTTP 503 Service Unavailable")


def test_a_drop_soon_after_a_page_waits_and_gathers_the_next_ones(
    conn: Connection, receiver: Receiver
) -> None:
    """A long overflow moves the broker's count every 10 s: the operator is paged at once,
    then at most every COALESCE_S with what was dropped meanwhile, not every 10 s."""
    broker_watch.record(conn, b"0", T0)
    broker_watch.record(conn, b"7", T0 + timedelta(seconds=10))
    assert deliver_due(conn, Webhook(receiver.url)) == 1
    for seconds, count in [(20, b"9"), (30, b"12"), (40, b"20")]:
        broker_watch.record(conn, count, T0 + timedelta(seconds=seconds))
    rows = conn.execute(
        "SELECT details->>'dropped', details->>'dropped_since_broker_start', sent_at IS NOT NULL,"
        " round(extract(epoch FROM next_attempt_at - (SELECT min(sent_at) FROM operator_pages)))"
        " FROM operator_pages ORDER BY id"
    ).fetchall()
    assert rows == [("7", "7", True, rows[0][3]), ("13", "20", False, COALESCE_S)]
    assert deliver_due(conn, Webhook(receiver.url)) == 0  # not due before the window ends
    assert len(receiver.bodies) == 1
    # a drop long after the waiting page was raised is a page of its own
    broker_watch.record(conn, b"21", T0 + timedelta(seconds=40 + COALESCE_S + 1))
    assert conn.execute("SELECT count(*) FROM operator_pages").fetchone() == (3,)


def test_an_unreachable_webhook_is_said_so(conn: Connection) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raise_page(conn, Page("test_page", "dropped 1"), T0)
    assert deliver_due(conn, Webhook(f"http://127.0.0.1:{port}/hook")) == 0
    (last_error,) = conn.execute("SELECT last_error FROM operator_pages").fetchone()
    assert last_error.startswith("the webhook could not be reached (")
    assert "refused" in last_error.lower()


def test_a_webhook_that_does_not_answer_in_time_fails_the_try(
    conn: Connection, receiver: Receiver
) -> None:
    raise_page(conn, Page("test_page", "dropped 1"), T0)
    receiver.hold.clear()
    try:
        started = time.monotonic()
        assert deliver_due(conn, Webhook(receiver.url, timeout_s=0.5)) == 0
        assert time.monotonic() - started < 10
    finally:
        receiver.hold.set()
    (last_error,) = conn.execute("SELECT last_error FROM operator_pages").fetchone()
    assert last_error == "the webhook did not answer within 0.5 s"


def test_two_pagers_never_send_the_same_page(
    store_url: str, conn: Connection, receiver: Receiver
) -> None:
    """The first pager holds its pages while the webhook has not answered; the second skips
    them rather than waiting or sending them too."""
    raise_page(conn, Page("test_page", "dropped 1"), T0)
    receiver.hold.clear()
    webhook = Webhook(receiver.url, timeout_s=60)  # held for as long as the test needs
    sent: list[int] = []
    first = threading.Thread(target=lambda: sent.append(deliver_due(conn, webhook)))
    first.start()
    try:
        assert receiver.arrived.acquire(timeout=30)  # the first pager's POST is in flight
        with psycopg.connect(store_url, autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")  # waiting for the first would fail here
            assert deliver_due(other, webhook) == 0
    finally:
        receiver.hold.set()
        first.join(30)
    assert sent == [1]
    assert len(receiver.bodies) == 1


def test_the_pager_thread_sends_a_backlog_oldest_first_in_batches(
    store_url: str, conn: Connection, receiver: Receiver
) -> None:
    for n in range(45):
        raise_page(conn, Page("test_page", f"dropped {n}", {"n": n}), T0 + timedelta(seconds=n))
    pager = Pager(store_url, Webhook(receiver.url), interval_s=0.05).start()
    try:
        deadline = time.monotonic() + 30
        while len(receiver.pages()) < 45 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pager.stop()
    assert not pager.running
    assert [len(body["pages"]) for body in receiver.bodies] == [20, 20, 5]
    assert [page["details"]["n"] for page in receiver.pages()] == list(range(45))
    assert receiver.bodies[2]["text"].startswith("[ehealthlab] 5 pages:\n- dropped 40 (raised")
    assert conn.execute("SELECT count(*) FROM operator_pages WHERE sent_at IS NULL").fetchone() == (
        0,
    )


def test_a_webhook_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        Webhook("file:///etc/passwd")


# -- in the API: every API process runs a pager for the operator's webhook -----------------


def test_the_api_pages_the_operator_through_its_webhook(
    database_url: str, mosquitto_broker, tmp_path_factory, receiver: Receiver
) -> None:
    settings = settings_for(
        database_url, mosquitto_broker, tmp_path_factory,
        operator_webhook_url=SecretStr(receiver.url),
    )  # fmt: skip
    with app_client(settings), psycopg.connect(database_url, autocommit=True) as conn:
        broker_watch.record(conn, b"0", T0)
        broker_watch.record(conn, b"31", T0 + timedelta(seconds=10))
        # (the API's own presence leader records the session broker's real count too, which
        # may join the page)
        deadline = time.monotonic() + 30
        while not _carrying(receiver, 31) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _carrying(receiver, 31), "the API's pager did not send the page"


def _carrying(receiver: Receiver, dropped: int) -> bool:
    return any(p["details"].get("dropped", 0) >= dropped for p in receiver.pages())


def test_without_a_webhook_the_api_says_nobody_is_paged(
    settings, caplog: pytest.LogCaptureFixture
) -> None:
    with app_client(settings):
        pass
    assert any(
        r.levelname == "WARNING" and "nobody is paged" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example/x", "https:///no-host", "hooks.example/x", "file:///etc/passwd"]
)
def test_the_api_refuses_to_start_with_a_webhook_it_cannot_post_to(
    database_url: str, mosquitto_broker, tmp_path_factory, url: str
) -> None:
    settings = settings_for(
        database_url, mosquitto_broker, tmp_path_factory, operator_webhook_url=SecretStr(url)
    )
    with (
        pytest.raises(ConfigurationError, match="EHEALTHLAB_OPERATOR_WEBHOOK_URL") as error,
        app_client(settings),
    ):
        pass
    assert url not in str(error.value)  # such a URL carries its own key: never printed


@pytest.mark.parametrize(
    "case",
    [
        ("trickle", 0.5, "the webhook did not answer within 0.5 s"),
        ("garbage", 5.0, "the webhook's answer was not HTTP (BadStatusLine)"),
        (503, 5.0, "the webhook answered HTTP 503 Service Unavailable"),
    ],
)
def test_a_webhook_that_answers_badly_or_slowly_fails_the_try_in_time_and_never_leaks_its_url(
    conn: Connection, receiver: Receiver, caplog: pytest.LogCaptureFixture, case
) -> None:
    """The whole exchange has a deadline (a trickled answer cannot hold the pages' locks),
    every failure is counted with a reason, and the URL's key is in no message."""
    answer, timeout_s, said = case
    raise_page(conn, Page("test_page", "dropped 1"), T0)
    receiver.answers = [answer]
    webhook = Webhook(f"{receiver.url}/k3y-0f-the-0perat0r?token=s3cret", timeout_s=timeout_s)
    started = time.monotonic()
    assert deliver_due(conn, webhook) == 0
    assert time.monotonic() - started < timeout_s + 4.5  # the trickle: 30 s without the deadline
    (last_error, attempts) = conn.execute(
        "SELECT last_error, attempts FROM operator_pages"
    ).fetchone()
    assert (last_error, attempts) == (said, 1)
    for secret in ("k3y-0f-the-0perat0r", "s3cret"):
        assert secret not in caplog.text
        assert secret not in last_error
    assert [r.levelname for r in caplog.records if r.name == "ehealthlab.gateway.pager"] == [
        "WARNING"
    ]
