"""Opening connections to the store, and the one place psycopg's connection errors are
translated into the platform's errors (a missing server is one line naming what to start)."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg

from ehealthlab.errors import ServiceUnavailableError
from ehealthlab.settings import Settings

Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]


def connect(settings: Settings, *, autocommit: bool = False) -> Connection:
    """A connection to the configured database, or ServiceUnavailableError saying why not."""
    url = settings.require_database_url()
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else "no answer"
        raise ServiceUnavailableError(
            f"cannot reach PostgreSQL ({reason}); start the local stack with "
            "`ehealthlab stack up` or fix EHEALTHLAB_DATABASE_URL"
        ) from None
