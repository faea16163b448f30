"""The pager: sends the operator's pages (operator_pages.py) to their webhook, until it
answers.

A page is raised in the transaction that records its cause (`raise_page`), into the
`operator_pages` table (migration 0036), and sent afterwards: a broker drop is recorded even
when the webhook is down, and paged once it is back. Every API process runs a pager; they
share the work without sending a page twice by locking the pages they send
(`FOR UPDATE SKIP LOCKED`) until the webhook has answered. A page counts as sent on a 2xx
answer; a failed try is counted, its reason kept, and the page tried again after a doubling
delay (`operator_pages.retry_delay_s`). A pager that dies between the webhook's answer and
its commit sends that page again: at least once.

The webhook is a plain HTTPS POST of JSON (urllib: one request, no redirects followed, a
timeout), so that any chat's incoming webhook or an alerting bridge can take it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.types.json import Jsonb

from ehealthlab.errors import ConfigurationError, ServiceUnavailableError, StoreError
from ehealthlab.gateway.operator_pages import Page, QueuedPage, retry_delay_s, webhook_body
from ehealthlab.store.db import Connection

log = logging.getLogger(__name__)

#: how often a pager looks for pages due: a page goes out within about this long
INTERVAL_S = 2.0
#: the first retry's delay, doubled at each failure up to the cap
RETRY_BASE_S, RETRY_CAP_S = 5.0, 300.0
#: pages sent in one POST at most (a backlog goes out in a few posts, oldest first)
BATCH = 20
#: how long the webhook may take to answer before the try counts as failed
TIMEOUT_S = 10.0
#: how much of a failure's reason is kept with the page
ERROR_CHARS = 300


class PageDeliveryError(ServiceUnavailableError):
    """The webhook did not take the pages; the message says what it answered, if anything."""


def raise_page(conn: Connection, page: Page, raised_at: datetime) -> int:
    """Keep a page for the pager, in the caller's transaction; its id."""
    row = conn.execute(
        "INSERT INTO operator_pages (raised_at, event, summary, details)"
        " VALUES (%s, %s, %s, %s) RETURNING id",
        (raised_at, page.event, page.summary, Jsonb(dict(page.details))),
    ).fetchone()
    if row is None:  # INSERT … RETURNING always returns its row
        raise StoreError("operator_pages: the page was not kept")
    return int(row[0])


class Webhook:
    """The operator's webhook: `post(body)` returns on a 2xx answer, else raises
    PageDeliveryError."""

    def __init__(self, url: str, *, timeout_s: float = TIMEOUT_S) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigurationError("the operator's webhook must be an http:// or https:// URL")
        self.url = url
        self.timeout_s = timeout_s
        # no redirect followed: a POST redirected becomes a GET without its body
        self._opener = urllib.request.build_opener(_NoRedirect)

    def post(self, body: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310 (http or https, checked above)
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "ehealthlab-pager"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(64 * 1024)
        except urllib.error.HTTPError as exc:
            raise PageDeliveryError(f"the webhook answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise PageDeliveryError(f"the webhook could not be reached ({reason})") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx answer


def deliver_due(
    conn: Connection,
    post: Callable[[bytes], None],
    *,
    batch: int = BATCH,
    retry_base_s: float = RETRY_BASE_S,
    retry_cap_s: float = RETRY_CAP_S,
) -> int:
    """Send the pages due now, up to `batch` of them, in one POST; how many were sent (0 when
    none was due or the webhook refused them, which is then recorded on each page)."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, raised_at, event, summary, details, attempts FROM operator_pages"
            " WHERE sent_at IS NULL AND next_attempt_at <= now()"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
            (batch,),
        ).fetchall()
        if not rows:
            return 0
        pages = [QueuedPage(r[0], r[1], Page(r[2], r[3], r[4])) for r in rows]
        try:
            post(webhook_body(pages))
        except PageDeliveryError as exc:
            reason = str(exc)[:ERROR_CHARS]
            conn.execute(
                "UPDATE operator_pages AS p SET attempts = p.attempts + 1, last_error = %s,"
                " next_attempt_at = now() + make_interval(secs => d.delay)"
                " FROM unnest(%s::bigint[], %s::float8[]) AS d(id, delay) WHERE p.id = d.id",
                (
                    reason,
                    [r[0] for r in rows],
                    [retry_delay_s(r[5] + 1, retry_base_s, retry_cap_s) for r in rows],
                ),
            )
            log.warning(
                "pager: %d page(s) for the operator not sent, tried again later: %s",
                len(rows),
                reason,
            )
            return 0
        conn.execute(
            "UPDATE operator_pages SET attempts = attempts + 1, last_error = NULL,"
            " sent_at = now() WHERE id = ANY(%s)",
            ([r[0] for r in rows],),
        )
    log.info("pager: sent %d page(s) to the operator's webhook", len(rows))
    return len(rows)


class Pager:
    """The pager thread of one process: every `interval_s` it sends what is due, until
    nothing is; a lost database is reconnected at the next round, with one warning."""

    def __init__(
        self,
        database_url: str,
        webhook: Webhook,
        *,
        interval_s: float = INTERVAL_S,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
    ) -> None:
        self._url = database_url
        self._webhook = webhook
        self._interval_s = interval_s
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._conn: Connection | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ehl-pager", daemon=True)

    def start(self) -> Pager:
        self._thread.start()
        return self

    def stop(self, timeout: float = TIMEOUT_S + 5) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self._interval_s):
                self._round()
        finally:
            self._disconnect()

    def _round(self) -> None:
        try:
            if self._conn is None:
                self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            while not self._stopping.is_set():
                sent = deliver_due(
                    self._conn,
                    self._webhook.post,
                    retry_base_s=self._retry_base_s,
                    retry_cap_s=self._retry_cap_s,
                )
                if sent == 0:
                    break
        except psycopg.Error as exc:
            log.warning("pager: cannot read the operator's pages now: %s", _first_line(exc))
            self._disconnect()
        except Exception:  # a pager that dies pages nobody: log it and go on
            log.exception("pager: unexpected failure; trying again in %.0f s", self._interval_s)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
