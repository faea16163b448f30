"""Opening connections to the store, and the one place psycopg's connection errors are
translated into the platform's errors (a missing server is one line naming what to start)."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg

from ehealthlab.errors import ServiceUnavailableError
from ehealthlab.settings import Settings

Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first non-blank line of an error's message (psycopg's run to several), for a
    one-line report; `default`, or the error's class name, when it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return default if default is not None else type(exc).__name__


def connect(settings: Settings, *, autocommit: bool = False) -> Connection:
    """A connection to the configured database, or ServiceUnavailableError saying why not."""
    url = settings.require_database_url()
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"cannot reach PostgreSQL ({first_line(exc, 'no answer')}); start the local stack with "
            "`ehealthlab stack up` or fix EHEALTHLAB_DATABASE_URL"
        ) from None


#: keepalives on both ends of a connection that holds a lock while it waits on something
#: else, in seconds: a silent network loss ends the session on the server (freeing its locks)
#: and fails the client's next statement within about IDLE + INTERVAL x COUNT
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 4, 2, 2


def connect_kept_alive(
    url: str,
    application_name: str,
    *,
    connect_timeout: int = 5,
    idle_in_transaction_s: int | None = None,
) -> Connection:
    """An autocommit connection whose loss both ends notice within seconds (keepalives set
    on the client and, by SET, on the server), named so an operator sees who holds what in
    pg_stat_activity; with `idle_in_transaction_s`, the server also ends a transaction left
    idle that long. Raises psycopg's errors: its callers retry."""
    conn = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=connect_timeout,
        application_name=application_name[:63],  # PostgreSQL keeps 63 bytes
        keepalives=1,
        keepalives_idle=KEEPALIVE_IDLE_S,
        keepalives_interval=KEEPALIVE_INTERVAL_S,
        keepalives_count=KEEPALIVE_COUNT,
        tcp_user_timeout=1000 * (KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT),
    )
    try:
        conn.execute(
            f"SET tcp_keepalives_idle = {KEEPALIVE_IDLE_S};"
            f" SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S};"
            f" SET tcp_keepalives_count = {KEEPALIVE_COUNT}"
        )
        if idle_in_transaction_s is not None:
            conn.execute(
                f"SET idle_in_transaction_session_timeout = {1000 * int(idle_in_transaction_s)}"
            )
    except psycopg.Error:
        conn.close()
        raise
    return conn
