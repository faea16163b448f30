"""A transaction that costs no round trip of its own where it can: for a writer that commits
many small transactions a second, BEGIN and COMMIT each cost a wait for the server, and on
a machine the load fills each wait is a wake-up queued behind everything else.

On an autocommit connection idle between transactions (an ingest worker's), BEGIN travels
with the first statements (`opening`) and COMMIT with the last ones (`closing`), each group
sent together in pipeline mode and answered in one wait. Inside a caller's transaction, or
on a connection that is not autocommit, it is what `conn.transaction()` makes there (a
savepoint, or a transaction block), and `opening` and `closing` only pipeline their
statements.

Statements in `closing` are sent before any result comes back: none of them may depend on
another's rowcount or rows. A failure among them fails the block at the end of `closing`,
and the transaction rolls back as it would anywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType

import psycopg
from psycopg.pq import TransactionStatus

from ehealthlab.store.db import Connection

log = logging.getLogger(__name__)

#: pipeline mode needs libpq 14 or later (psycopg[binary] bundles a newer one); without it
#: the transaction is `conn.transaction()`'s and its statements wait one by one
_PIPELINES = psycopg.Pipeline.is_supported()


def idle_autocommit(conn: Connection) -> bool:
    """An autocommit connection between transactions (an ingest worker's): a statement sent
    now is a transaction of its own, and no caller's transaction is there to join."""
    return conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE


class PipelinedTransaction:
    """`with PipelinedTransaction(conn) as tx:`, then `with tx.opening():` around the first
    statements and `with tx.closing():` around the last (see the module's docstring)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._own = False
        self._block: AbstractContextManager[object] | None = None

    def __enter__(self) -> PipelinedTransaction:
        conn = self._conn
        self._own = _PIPELINES and idle_autocommit(conn)
        if not self._own:
            self._block = conn.transaction()
            self._block.__enter__()
        return self

    @contextmanager
    def opening(self) -> Iterator[None]:
        """The first statements, sent with BEGIN; fetch their results after the block (a
        fetch inside it is a wait of its own)."""
        with self._pipeline():
            if self._own:
                self._conn.execute("BEGIN")
            yield

    @contextmanager
    def closing(self) -> Iterator[None]:
        """The last statements, sent with COMMIT; the block waits once, for all of them."""
        with self._pipeline():
            yield
            if self._own:
                self._conn.execute("COMMIT")

    def _pipeline(self) -> AbstractContextManager[object]:
        return self._conn.pipeline() if _PIPELINES else nullcontext()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if self._block is not None:
            return bool(self._block.__exit__(exc_type, exc, traceback))
        conn = self._conn
        if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
            return False  # committed by `closing`, or over already (rolled back by the server)
        if exc is None:
            conn.commit()  # a block that ended without `closing`
            return False
        try:
            conn.rollback()
        except psycopg.Error as failure:  # the connection is lost: so is the transaction
            log.warning("rollback after %s failed: %s", type(exc).__name__, failure)
        return False
