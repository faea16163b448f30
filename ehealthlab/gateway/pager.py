"""The pager: sends the operator's pages (operator_pages.py) to their webhook, until it
answers.

A page is raised in the transaction that records its cause (`raise_page`), into the
`operator_pages` table (migration 0036), and sent afterwards: a broker drop is recorded even
when the webhook is down, and paged once it is back. A page raised while another of its event
waits to be sent joins it; one raised soon after its event was paged waits `COALESCE_S`, so a
long overflow that moves the broker's count every 10 s pages every few minutes, not every
10 s. Every API process runs a pager; they share the work without sending a page twice by
locking the pages they send (`FOR UPDATE SKIP LOCKED`) until the webhook has answered. A page
counts as sent on a 2xx answer; a failed try is counted, its reason kept, and the page tried
again after a doubling delay (`operator_pages.retry_delay_s`). A pager that dies between the
webhook's answer and its commit sends that page again: at least once.

The webhook is one HTTP POST of JSON (http.client: no proxy, no redirect followed) with a
deadline for the whole exchange, so a webhook that trickles its answer cannot hold the pages'
locks. Its URL is a secret (such URLs carry their key): no message here ever contains it.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import ssl
import threading
from datetime import datetime
from http import HTTPStatus
from urllib.parse import urlsplit

import psycopg
from psycopg.types.json import Jsonb

from ehealthlab.errors import ServiceUnavailableError, StoreError
from ehealthlab.gateway.operator_pages import (
    Page,
    QueuedPage,
    merge_pages,
    retry_delay_s,
    webhook_body,
    webhook_url,
)
from ehealthlab.store.db import Connection, connect_kept_alive, first_line

log = logging.getLogger(__name__)

#: how often a pager looks for pages due: a page goes out within about this long
INTERVAL_S = 2.0
#: the first retry's delay, doubled at each failure up to the cap
RETRY_BASE_S, RETRY_CAP_S = 5.0, 300.0
#: a page of an event paged less than this long ago waits until then (and gathers the rest)
COALESCE_S = 300.0
#: pages sent in one POST at most (a backlog goes out in a few posts, oldest first)
BATCH = 20
#: the whole exchange with the webhook, connecting to answering, must end within this
TIMEOUT_S = 10.0
#: a transaction the pager leaves idle this long (a hung pager) is ended by the server
IDLE_IN_TRANSACTION_S = 60
#: how much of a failure's reason is kept with the page
ERROR_CHARS = 300


class PageDeliveryError(ServiceUnavailableError):
    """The webhook did not take the pages; the message says what it answered, if anything
    (never the URL)."""


def raise_page(
    conn: Connection, page: Page, raised_at: datetime, *, coalesce_s: float = COALESCE_S
) -> int:
    """Keep a page for the pager, in the caller's transaction; the id of the page that
    carries it. A page of its event raised less than `coalesce_s` before it and not sent yet
    takes it in (`merge_pages`; unless that page is being sent right now); otherwise a new
    page, due `coalesce_s` after its event was last paged."""
    pending = conn.execute(
        "SELECT id, summary, details FROM operator_pages"
        " WHERE event = %s AND sent_at IS NULL"
        "   AND raised_at > %s - make_interval(secs => %s)"
        " ORDER BY id DESC LIMIT 1 FOR UPDATE SKIP LOCKED",
        (page.event, raised_at, coalesce_s),
    ).fetchone()
    if pending is not None:
        merged = merge_pages(Page(page.event, pending[1], pending[2]), page)
        if merged is not None:
            conn.execute(
                "UPDATE operator_pages SET summary = %s, details = %s WHERE id = %s",
                (merged.summary, Jsonb(dict(merged.details)), pending[0]),
            )
            return int(pending[0])
    row = conn.execute(
        "INSERT INTO operator_pages (raised_at, event, summary, details, next_attempt_at)"
        " SELECT %s, %s, %s, %s, greatest(now(), max(sent_at) + make_interval(secs => %s))"
        " FROM operator_pages WHERE event = %s"
        " RETURNING id",
        (raised_at, page.event, page.summary, Jsonb(dict(page.details)), coalesce_s, page.event),
    ).fetchone()
    if row is None:  # INSERT … RETURNING always returns its row
        raise StoreError("operator_pages: the page was not kept")
    return int(row[0])


class Webhook:
    """The operator's webhook: `post(body)` returns on a 2xx answer, else raises
    PageDeliveryError. The whole exchange ends within `timeout_s` (the name's lookup
    aside): past it the socket is shut down under the request."""

    def __init__(self, url: str, *, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(webhook_url(url))
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout_s = timeout_s

    def post(self, body: bytes) -> None:
        connection = self._connection()
        cut = threading.Event()
        deadline = threading.Timer(self.timeout_s, _cut, args=(connection, cut))
        deadline.daemon = True
        deadline.start()
        try:
            # connecting first: a deadline that passed while there was no socket to cut
            # (a slow name lookup or connect) must still end the try
            connection.connect()
            if cut.is_set():
                raise TimeoutError
            connection.request(
                "POST",
                self._target,
                body=body,
                headers={"Content-Type": "application/json", "User-Agent": "ehealthlab-pager"},
            )
            response = connection.getresponse()
            status = response.status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise PageDeliveryError(_failure(exc, cut.is_set(), self.timeout_s)) from None
        finally:
            deadline.cancel()
            connection.close()  # the answer's body is not read: the status says it all
        if cut.is_set():  # cut mid-headers, http.client takes the end of input for their end
            raise PageDeliveryError(_failure(TimeoutError(), True, self.timeout_s))
        if not 200 <= status < 300:
            # the standard phrase, not the server's (a proxy may echo the path, and its key)
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = ""
            raise PageDeliveryError(f"the webhook answered HTTP {status} {phrase}".rstrip())

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=self.timeout_s,
                context=ssl.create_default_context(),
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)


def _cut(connection: http.client.HTTPConnection, cut: threading.Event) -> None:
    """The deadline: shut the socket down, so that whatever the exchange is waiting on
    fails or ends at once, and say so."""
    cut.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            # the plain socket's shutdown, also under TLS: SSLSocket.shutdown would first
            # drop the TLS state another thread is using to write
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _failure(exc: BaseException, cut: bool, timeout_s: float) -> str:
    """Why a try failed, in words that never quote the URL."""
    if cut or isinstance(exc, TimeoutError):
        return f"the webhook did not answer within {timeout_s:g} s"
    if isinstance(exc, ssl.SSLError):
        return f"the webhook's TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError):
        words = exc.strerror or type(exc).__name__
        return f"the webhook could not be reached ({words})"
    return f"the webhook's answer was not HTTP ({type(exc).__name__})"


def deliver_due(
    conn: Connection,
    webhook: Webhook,
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
            webhook.post(webhook_body(pages))
        except PageDeliveryError as exc:
            reason = str(exc)[:ERROR_CHARS]
            # the delay counts from the failure, not from the try's start
            conn.execute(
                "UPDATE operator_pages AS p SET attempts = p.attempts + 1, last_error = %s,"
                " next_attempt_at = clock_timestamp() + make_interval(secs => d.delay)"
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
            " sent_at = clock_timestamp() WHERE id = ANY(%s)",
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
        """End the thread; one sending a POST finishes it first (within its deadline)."""
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
                # keepalives: a silent network loss must not hold the pages' locks for long
                self._conn = connect_kept_alive(
                    self._url,
                    f"ehl-pager {socket.gethostname()}:{os.getpid()}",
                    idle_in_transaction_s=IDLE_IN_TRANSACTION_S,
                )
            while not self._stopping.is_set():
                sent = deliver_due(
                    self._conn,
                    self._webhook,
                    retry_base_s=self._retry_base_s,
                    retry_cap_s=self._retry_cap_s,
                )
                if sent == 0:
                    break
        except psycopg.Error as exc:
            log.warning("pager: cannot read the operator's pages now: %s", first_line(exc))
            self._disconnect()
        except Exception:  # a pager that dies pages nobody: log it and go on
            log.exception("pager: unexpected failure; trying again in %.0f s", self._interval_s)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
