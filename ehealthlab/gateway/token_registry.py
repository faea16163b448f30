"""The registry's SQL for API tokens: issued to an organisation, authenticated, revoked.

The tokens themselves (their randomness, their hash) are tokens.py; this module keeps only
their hashes and what they speak for. Thin functions over one connection each; the caller owns
the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from psycopg import sql
from psycopg.rows import class_row

from ehealthlab.gateway import tokens
from ehealthlab.gateway.organisation_registry import OrganisationKind
from ehealthlab.gateway.registry_sql import columns, one_row
from ehealthlab.store.db import Connection

TokenRole = Literal["admin", "member"]


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: UUID
    organisation_id: UUID
    role: TokenRole
    label: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Who a valid token speaks for."""

    token_id: UUID
    organisation_id: UUID
    kind: OrganisationKind
    role: TokenRole
    token_hash: bytes


_TOKEN_COLUMNS = columns(
    "id", "organisation_id", "role", "label", "created_at", "revoked_at", "last_used_at"
)


def create_token(
    conn: Connection, organisation_id: UUID, role: TokenRole = "admin", label: str = ""
) -> tuple[TokenRow, str]:
    """A new token for an organisation: the row, and the token itself (shown once)."""
    token = tokens.new_token()
    with conn.cursor(row_factory=class_row(TokenRow)) as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO api_tokens (organisation_id, role, token_hash, label)"
                " VALUES (%s, %s, %s, %s) RETURNING {cols}"
            ).format(cols=_TOKEN_COLUMNS),
            (organisation_id, role, tokens.hash_token(token), label),
        )
        return one_row(cur.fetchone()), token


# One round trip; `last_used_at` is written at most once a minute per token, so a busy
# client does not turn every request into a write.
_AUTHENTICATE = """
    WITH hit AS (
        SELECT t.id, t.organisation_id, o.kind, t.role, t.token_hash, t.last_used_at
        FROM api_tokens t JOIN organisations o ON o.id = t.organisation_id
        WHERE t.token_hash = %(hash)s AND t.revoked_at IS NULL
    ), touched AS (
        UPDATE api_tokens t SET last_used_at = now() FROM hit
        WHERE t.id = hit.id
          AND (hit.last_used_at IS NULL OR hit.last_used_at < now() - interval '1 minute')
    )
    SELECT id AS token_id, organisation_id, kind, role, token_hash FROM hit
"""


def authenticate(conn: Connection, token_hash: bytes) -> TokenOwner | None:
    """The owner of a valid (known, unrevoked) token, or None."""
    with conn.cursor(row_factory=class_row(TokenOwner)) as cur:
        cur.execute(_AUTHENTICATE, {"hash": token_hash})
        return cur.fetchone()


def revoke_token(conn: Connection, token_id: UUID, organisation_id: UUID | None = None) -> bool:
    """Revoke a token (of `organisation_id` when given); False when there is no such token.

    Revoking twice is not an error: the first revocation time stays.
    """
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())"
        " WHERE id = %s AND (%s::uuid IS NULL OR organisation_id = %s::uuid) RETURNING id",
        (token_id, organisation_id, organisation_id),
    )
    return cur.fetchone() is not None
