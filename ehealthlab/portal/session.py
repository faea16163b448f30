"""The portal's sessions and CSRF tokens: pure functions of a key, no I/O.

A login exchanges an API token for a session cookie that holds no secret of the token: a
random session id, the token's SHA-256 hash (what the database keeps, useless as a bearer
token) and an expiry, signed with HMAC-SHA256. Each request looks the hash up again, so
revoking the API token ends every portal session made with it at once. The cookie carries
its own state, so any number of API workers accept it without sharing memory; logging out
records the session id in the store, where every worker looks (`ended_sessions.py`).

CSRF tokens are HMACs of the session id (synchroniser tokens that need no storage); the
login form, which has no session yet, uses a random nonce kept in a short-lived cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

#: the session cookie's name over plain HTTP; over TLS the `__Host-` form (Secure, Path=/)
SESSION_COOKIE = "ehl_session"
SECURE_SESSION_COOKIE = "__Host-ehl_session"
#: the login form's nonce cookie (no session yet)
LOGIN_COOKIE = "ehl_login"
SECURE_LOGIN_COOKIE = "__Host-ehl_login"
#: name of the hidden field every form carries
CSRF_FIELD = "csrf_token"

_KEY_LABEL = b"ehealthlab portal session key v1"


def session_key(secret: bytes) -> bytes:
    """The key sessions are signed with, derived from a configured secret (the portal's own,
    or the patient key) so that it is never used for two purposes as is."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, message: str) -> str:
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class Session:
    """A portal login: whose token (by hash), until when."""

    session_id: str
    token_hash: bytes
    expires_at: datetime


def new_session(key: bytes, token_hash: bytes, now: datetime, lifetime: timedelta) -> str:
    """The cookie value of a new session of the token with this hash."""
    session_id = secrets.token_urlsafe(18)
    expires = int((now + lifetime).timestamp())
    body = f"{session_id}.{_b64(token_hash)}.{expires}"
    return f"{body}.{_sign(key, body)}"


def open_session(key: bytes, value: str, now: datetime) -> Session | None:
    """The session a cookie value stands for, or None when it is malformed, forged or
    expired."""
    parts = value.split(".")
    if len(parts) != 4:
        return None
    session_id, token_hash, expires, signature = parts
    body = f"{session_id}.{token_hash}.{expires}"
    if not hmac.compare_digest(signature, _sign(key, body)):
        return None
    try:
        expires_at = datetime.fromtimestamp(int(expires), tz=now.tzinfo)
        digest = _unb64(token_hash)
    except ValueError:
        return None
    if expires_at <= now or len(digest) != hashlib.sha256().digest_size:
        return None
    return Session(session_id, digest, expires_at)


def csrf_token(key: bytes, session_id: str) -> str:
    """The CSRF token of a session's forms (or of a login nonce)."""
    return _sign(key, "csrf:" + session_id)


def csrf_matches(key: bytes, session_id: str, presented: str | None) -> bool:
    """Constant-time check of a form's CSRF token."""
    return presented is not None and hmac.compare_digest(
        presented.encode(), csrf_token(key, session_id).encode()
    )


def new_login_nonce() -> str:
    return secrets.token_urlsafe(18)
