"""What makes /fhir fast without changing what it answers: the verified-token cache (and that a
revocation still takes effect within its time), the audit writer that batches entries off the
request path (nothing lost, nothing dropped silently), and the fast path's own identifier
hashing. Real PostgreSQL and Mosquitto; the clock of the token cache is the test's.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from gateway_fixtures import run_admin
from hypothesis import given
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from ehealthlab.api.auth import TokenCache
from ehealthlab.fhir.audit import AuditEntry, AuditWriter
from ehealthlab.fhir.mapping import fast
from ehealthlab.fhir.mapping.ids import observation_id, observation_identifier
from ehealthlab.fhir.search import sql
from ehealthlab.gateway import token_registry

# -- the token cache, on its own ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def principal(n: int) -> object:
    return ("principal", n)


def test_a_verified_token_is_trusted_for_its_seconds_and_no_longer():
    clock = Clock()
    cache = TokenCache(seconds=5, size=10, clock=clock)
    cache.put(b"a", principal(1))  # type: ignore[arg-type]
    clock.now += 4.9
    assert cache.get(b"a") == principal(1)
    clock.now += 0.1
    assert cache.get(b"a") is None
    assert len(cache) == 0  # forgotten, not kept expired
    assert cache.get(b"never") is None


def test_the_cache_is_bounded_forgetting_the_least_recently_verified():
    clock = Clock()
    cache = TokenCache(seconds=60, size=3, clock=clock)
    for n in range(3):
        cache.put(bytes([n]), principal(n))  # type: ignore[arg-type]
    cache.put(bytes([0]), principal(0))  # verified again: the most recent now
    cache.put(bytes([3]), principal(3))  # type: ignore[arg-type]
    assert len(cache) == 3
    assert cache.get(bytes([1])) is None
    assert [cache.get(bytes([n])) for n in (0, 2, 3)] == [principal(0), principal(2), principal(3)]


# -- through the application ------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_revoked_token_is_refused_by_fhir_within_the_cache_time_and_at_once_elsewhere(
    client, settings
):
    operator = run_admin(settings, "admin", "bootstrap")
    made = run_admin(settings, "admin", "token", "create", "--organisation",
                     operator["organisation_id"])  # fmt: skip
    cache = client.app.state.context.tokens
    clock = Clock()
    cache.clock = clock
    headers = bearer(made["token"])
    assert client.get("/fhir/Location/001272", headers=headers).status_code == 200  # verified
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    run_admin(settings, "admin", "token", "revoke", made["token_id"])
    # /api/v1 asks the database every time
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    # /fhir trusts what it verified, for TOKEN_CACHE_SECONDS
    clock.now += cache.seconds - 0.5
    assert client.get("/fhir/Location/001272", headers=headers).status_code == 200
    clock.now += 0.5
    refused = client.get("/fhir/Location/001272", headers=headers)
    assert refused.status_code == 401 and refused.json()["resourceType"] == "OperationOutcome"
    # and a refusal is not remembered: a valid token is asked about as usual
    assert client.get("/fhir/Location/001272", headers=bearer(operator["token"])).status_code == 200


def test_connections_the_server_closed_cost_no_failed_request(client, settings, database_url):
    operator = run_admin(settings, "admin", "bootstrap")
    headers = bearer(operator["token"])
    assert client.get("/fhir/Location/001272", headers=headers).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:  # as a restart would
        closed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert closed is not None and closed[0] >= 2  # the router's pool had its two
    for _ in range(3):
        assert client.get("/fhir/Location/001272", headers=headers).status_code == 200


def test_reads_are_audited_by_the_writer_and_the_operator_sees_them_at_once(client, settings):
    operator = run_admin(settings, "admin", "bootstrap")
    headers = bearer(operator["token"])
    patient = str(uuid.uuid4())
    for _ in range(3):
        answer = client.get("/fhir/Observation", params={"patient": patient}, headers=headers)
        assert answer.status_code == 200
    assert client.get(f"/fhir/Patient/{patient}", headers=headers).status_code == 404
    # the trail is read right after: the writer is flushed first, nothing is missing
    events = {"entity": f"Patient/{patient}", "_count": "10"}
    trail = client.get("/fhir/AuditEvent", params=events, headers=headers).json()
    assert trail["total"] == 4
    outcomes = sorted(e["resource"]["outcome"] for e in trail["entry"])
    assert outcomes == ["0", "0", "0", "4"]  # three searches, one read not found
    recorded = [datetime.fromisoformat(e["resource"]["recorded"]) for e in trail["entry"]]
    assert all(abs(datetime.now(UTC) - at) < timedelta(minutes=5) for at in recorded)


# -- the audit writer, on a pool of its own -----------------------------------------------------


@pytest.fixture
def pool(database_url) -> Iterator[ConnectionPool]:
    with ConnectionPool(database_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as p:
        yield p


@pytest.fixture
def caller(database_url) -> tuple[uuid.UUID, uuid.UUID]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO organisations (kind, name) VALUES ('provider', %s) RETURNING id",
            (f"writer {uuid.uuid4().hex[:8]}",),
        ).fetchone()
        assert row is not None
        token, _ = token_registry.create_token(conn, row[0])
    return row[0], token.id


def entry(caller: tuple[uuid.UUID, uuid.UUID], detail: str, **changes: object) -> AuditEntry:
    organisation, token = caller
    fields: dict[str, object] = {
        "organisation_id": organisation,
        "token_id": token,
        "interaction": "search-type",
        "resource_type": "Observation",
        "http_status": 200,
        "detail": detail,
        "recorded": datetime(2026, 11, 25, 12, tzinfo=UTC),
    }
    return AuditEntry(**(fields | changes))  # type: ignore[arg-type]


def written(database_url: str, prefix: str) -> list[tuple[str, datetime]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT detail, recorded FROM fhir_audit_events WHERE detail LIKE %s ORDER BY detail",
            (prefix + "%",),
        ).fetchall()


def test_the_writer_batches_and_a_flush_waits_for_everything_queued(pool, caller, database_url):
    writer = AuditWriter(pool, linger=60.0).start()  # a batch would wait a minute to fill
    try:
        for n in range(25):
            assert writer.submit(entry(caller, f"batch {n:02d}"))
        assert writer.flush(timeout=10)  # ... but a flush writes at once
        rows = written(database_url, "batch ")
        assert [d for d, _ in rows] == [f"batch {n:02d}" for n in range(25)]
        assert {at for _, at in rows} == {datetime(2026, 11, 25, 12, tzinfo=UTC)}
    finally:
        writer.close()
    assert writer.lost == 0 and writer.overflowed == 0


def test_a_full_queue_is_said_and_closing_writes_what_is_queued(pool, caller, database_url):
    writer = AuditWriter(pool, capacity=3)  # not started: nothing drains the queue
    assert all(writer.submit(entry(caller, f"full {n}")) for n in range(3))
    overflow = entry(caller, "full 3")
    assert not writer.submit(overflow)
    assert writer.overflowed == 1
    writer.write(overflow)  # what the request then does itself
    assert [d for d, _ in written(database_url, "full ")] == ["full 3"]
    writer.start().close()
    assert [d for d, _ in written(database_url, "full ")] == [f"full {n}" for n in range(4)]


def test_an_entry_the_database_refuses_is_counted_and_logged_the_rest_written(
    pool, caller, database_url, caplog
):
    writer = AuditWriter(pool).start()
    try:
        writer.submit(entry(caller, "refused 0"))
        writer.submit(entry(caller, "refused 1", organisation_id=uuid.uuid4()))  # no such one
        writer.submit(entry(caller, "refused 2"))
        with caplog.at_level(logging.ERROR, logger="ehealthlab.fhir.audit"):
            assert writer.flush(timeout=10)
    finally:
        writer.close()
    assert [d for d, _ in written(database_url, "refused ")] == ["refused 0", "refused 2"]
    assert writer.lost == 1
    assert "audit entry lost" in caplog.text and "refused 1" in caplog.text


# -- the fast path's own hashing, and statements that need no database -----------------------------


@given(
    device=st.from_regex(r"[a-z][a-z0-9-]{2,21}", fullmatch=True),
    code=st.sampled_from(["blood_pressure", "heart_rate", "spo2", "body_weight", "steps"]),
    at=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(UTC),
    ),
)
def test_the_fast_identifier_is_the_ids_one(device, code, at):
    resource_id = observation_id(device, code, at)
    assert fast._identifier(resource_id) == observation_identifier(resource_id)


def test_a_statement_with_an_answer_needs_no_database():
    answered = asyncio.run(sql.run(None, [sql.Statement.answer(42)]))  # type: ignore[arg-type]
    assert answered == [42]
