"""Portal sessions ended by logout, kept in the store so that every API worker refuses them
(migration 0027): the cookie itself is signed and stateless, so only a shared record can end
it before it expires."""

from __future__ import annotations

from datetime import datetime

from ehealthlab.portal.session import Session
from ehealthlab.store.db import Connection


def end_session(conn: Connection, session: Session, now: datetime) -> None:
    """Record the session as ended, and forget sessions that have expired by now."""
    conn.execute("DELETE FROM portal_ended_sessions WHERE expires_at <= %s", (now,))
    conn.execute(
        "INSERT INTO portal_ended_sessions (session_id, expires_at) VALUES (%s, %s)"
        " ON CONFLICT (session_id) DO NOTHING",
        (session.session_id, session.expires_at),
    )


def is_ended(conn: Connection, session_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM portal_ended_sessions WHERE session_id = %s", (session_id,)
    ).fetchone()
    return row is not None
