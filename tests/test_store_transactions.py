"""PipelinedTransaction: on an idle autocommit connection (an ingest worker's) BEGIN travels
with the first statements and COMMIT with the last, each group answered in one wait (read
from libpq's own trace of the protocol); it commits or rolls back as a transaction block
does; inside a caller's transaction it is a savepoint."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from store_fixtures import traced, waits

from ehealthlab.store.transactions import PipelinedTransaction, idle_autocommit


def stored(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [x for (x,) in conn.execute("SELECT x FROM t ORDER BY x")]


@pytest.fixture
def url(empty_database_url: str) -> str:
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int PRIMARY KEY)")
    return empty_database_url


def test_begin_and_commit_cost_no_wait_of_their_own(url):
    with psycopg.connect(url, autocommit=True) as conn:
        with traced(conn) as lines, PipelinedTransaction(conn) as transaction:
            with transaction.opening():
                first = conn.execute("SELECT 'first'")
                conn.execute("INSERT INTO t VALUES (1)")
            answer = first.fetchall()
            conn.execute("INSERT INTO t VALUES (%s)", (2,))
            with transaction.closing():
                conn.execute("INSERT INTO t VALUES (%s)", (3,))
                conn.execute("INSERT INTO t VALUES (%s)", (4,))
        status = conn.info.transaction_status
    assert answer == [("first",)]
    assert status == TransactionStatus.IDLE
    assert stored(url) == [1, 2, 3, 4]
    sent = [line for line in lines if line.startswith("F") and "Parse" in line]
    assert '"BEGIN"' in sent[0] and '"COMMIT"' in sent[-1]
    assert waits(lines) == 3  # the opening, the statement between, the closing


def test_the_same_statements_in_a_plain_transaction_wait_five_times(url):
    """The trace does count waits: without the pipeline, BEGIN and COMMIT are two more."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        traced(conn) as lines,
        conn.transaction(),
    ):
        conn.execute("SELECT 'first'").fetchall()
        conn.execute("INSERT INTO t VALUES (%s)", (2,))
        conn.execute("INSERT INTO t VALUES (%s)", (3,))
    assert waits(lines) == 5


def test_a_failure_in_the_closing_statements_rolls_everything_back(url):
    with psycopg.connect(url, autocommit=True) as conn:
        with (
            pytest.raises(psycopg.errors.UniqueViolation),
            PipelinedTransaction(conn) as transaction,
        ):
            with transaction.opening():
                conn.execute("INSERT INTO t VALUES (1)")
            with transaction.closing():
                conn.execute("INSERT INTO t VALUES (%s)", (2,))
                conn.execute("INSERT INTO t VALUES (%s)", (2,))
                conn.execute("INSERT INTO t VALUES (%s)", (3,))
        status = conn.info.transaction_status
        conn.execute("INSERT INTO t VALUES (5)")  # the connection goes on
    assert status == TransactionStatus.IDLE
    assert stored(url) == [5]


def test_a_failure_between_rolls_back_and_a_block_without_closing_commits(url):
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(ZeroDivisionError), PipelinedTransaction(conn) as transaction:
            with transaction.opening():
                conn.execute("INSERT INTO t VALUES (1)")
            raise ZeroDivisionError
        with PipelinedTransaction(conn) as transaction, transaction.opening():
            conn.execute("INSERT INTO t VALUES (2)")
        status = conn.info.transaction_status
    assert status == TransactionStatus.IDLE
    assert stored(url) == [2]


def test_inside_a_callers_transaction_it_is_a_savepoint(url):
    """The caller's transaction decides: a failed block is undone alone, a good one waits
    for the caller's commit (not visible before it)."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with (
            pytest.raises(psycopg.errors.UniqueViolation),
            PipelinedTransaction(conn) as transaction,
            transaction.closing(),
        ):
            conn.execute("INSERT INTO t VALUES (%s)", (1,))
        with PipelinedTransaction(conn) as transaction:
            with transaction.opening():
                conn.execute("INSERT INTO t VALUES (2)")
            with transaction.closing():
                conn.execute("INSERT INTO t VALUES (%s)", (3,))
        before_commit = stored(url)
        conn.commit()
    assert before_commit == []
    assert stored(url) == [1, 2, 3]


def test_only_an_autocommit_connection_between_transactions_is_idle_autocommit(url):
    with psycopg.connect(url, autocommit=True) as conn:
        between = idle_autocommit(conn)
        with conn.transaction():
            inside = idle_autocommit(conn)
    with psycopg.connect(url) as conn:
        not_autocommit = idle_autocommit(conn)
    assert (between, inside, not_autocommit) == (True, False, False)
