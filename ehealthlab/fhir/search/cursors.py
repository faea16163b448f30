"""Paging cursors: where the next (or previous) page of a search starts.

Paging is by keyset: a page link carries an opaque cursor holding the sort key of the row it
continues from, the search's fingerprint (parameters and caller) and the total, signed with
a server key, so a cursor cannot be altered nor replayed by another caller or on another search.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from ehealthlab.fhir.search.criteria import SearchParameterError

CursorKey = tuple[str | int, ...]
_CURSOR_VERSION = 1
_MAX_CURSOR_LENGTH = 1024
_SIGNATURE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: after (or before, for a previous page) the row with this sort
    key; the total counted on the first page travels along."""

    after: bool
    key: CursorKey
    total: int | None


def fingerprint(resource_type: str, sort: str, used: Iterable[tuple[str, str]], caller: str) -> str:
    """What a cursor is bound to: the search (type, sort, criteria) and who asked."""
    digest = hashlib.sha256()
    for part in (resource_type, sort, caller, *(f"{n}={v}" for n, v in used)):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def encode_cursor(cursor: Cursor, bound_to: str, secret: bytes) -> str:
    payload = orjson.dumps(
        [_CURSOR_VERSION, cursor.after, list(cursor.key), cursor.total, bound_to]
    )
    signature = hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return _b64(payload) + "." + _b64(signature)


def decode_cursor(token: str, bound_to: str, secret: bytes) -> Cursor:
    """The cursor if this server signed it for this search and caller; else
    SearchParameterError (400): a cursor is never trusted, only checked."""
    invalid = SearchParameterError("_cursor", "not a page of this search; start from the first")
    if len(token) > _MAX_CURSOR_LENGTH or token.count(".") != 1:
        raise invalid
    encoded_payload, encoded_signature = token.split(".")
    try:
        payload, signature = _unb64(encoded_payload), _unb64(encoded_signature)
    except ValueError:
        raise invalid from None
    expected = hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    if not hmac.compare_digest(signature, expected):
        raise invalid
    try:
        version, after, key, total, bound = orjson.loads(payload)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise invalid from None
    well_formed = (
        version == _CURSOR_VERSION
        and isinstance(after, bool)
        and isinstance(key, list)
        and all(isinstance(part, str | int) and not isinstance(part, bool) for part in key)
        and (total is None or (isinstance(total, int) and not isinstance(total, bool)))
    )
    if not well_formed or bound != bound_to:
        raise invalid
    return Cursor(after, tuple(key), total)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """A time as integer microseconds since 1970 (cursor keys are JSON)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """The inverse of micros; SearchParameterError for a value outside datetime's range."""
    try:
        return _EPOCH + timedelta(microseconds=value)
    except OverflowError:
        raise SearchParameterError("_cursor", "not a page of this search") from None
