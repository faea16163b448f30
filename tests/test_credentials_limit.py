"""Failed token checks are slowed down per client address, a correct token never is, and a
token is checked by its hash, compared in constant time.

The API is the module's application (the `client` fixture) asked through Starlette's test
client with chosen client addresses (the limiter keys by address; the default test client has
none and is not limited). The limiter's arithmetic is checked on its own with a clock the test
moves. Timing is not measured: a timing test on a loaded 2-core machine would either be
flaky or too coarse to mean anything; what is checked is that the only comparison of a
secret is hmac.compare_digest of two SHA-256 digests, and that the database is asked by hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.api.ratelimit import BURST, REFILL_PER_S, FailureLimiter, client_key
from ehealthlab.gateway import token_registry, tokens
from ehealthlab.gateway.admin import bootstrap_operator

PROBLEM = "application/problem+json"
FHIR_JSON = "application/fhir+json"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_failures_wait_and_earn_credit_back():
    clock = Clock()
    limiter = FailureLimiter(burst=3, refill_per_s=0.5, clock=clock)
    assert [limiter.failed("192.0.2.1") for _ in range(3)] == [0, 0, 0]
    assert limiter.failed("192.0.2.1") == 4  # credit -1: 2 credits to earn at 0.5/s
    assert limiter.failed("192.0.2.2") == 0  # another address has its own bucket
    clock.now += 4
    assert limiter.failed("192.0.2.1") == 0  # waited as told: answered as a plain failure
    assert limiter.failed("192.0.2.1") == 4
    for _ in range(50):  # ignoring Retry-After keeps it throttled, for a bounded time
        wait = limiter.failed("192.0.2.1")
    assert wait == 8  # floor at -burst: (1 + 3) / 0.5
    assert limiter.failed(None) == 0  # no address: nothing to key by


@pytest.mark.parametrize(
    ("workers", "burst", "refill"),
    [(1, BURST, REFILL_PER_S), (2, 5, REFILL_PER_S / 2), (3, 4, REFILL_PER_S / 3),
     (4, 3, REFILL_PER_S / 4), (10, 1, REFILL_PER_S / 10), (64, 1, REFILL_PER_S / 64)],
)  # fmt: skip
def test_each_worker_keeps_its_share_of_the_budget(workers, burst, refill):
    limiter = FailureLimiter.for_workers(workers)
    assert (limiter.burst, limiter.refill_per_s) == (burst, pytest.approx(refill))


@given(st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=1000))
def test_the_workers_shares_add_up_to_one_process_budget_or_a_little_more(workers, burst):
    """Wherever an address's connections land, all workers together let through at least
    `burst` plain failures and fewer than `burst + workers`, and earn back what one process
    would."""
    share = FailureLimiter.for_workers(workers, burst=burst, refill_per_s=1.0)
    assert burst <= workers * share.burst < burst + workers
    assert workers * share.refill_per_s == pytest.approx(1.0)
    assert share.burst >= 1


def test_no_workers_is_no_budget():
    with pytest.raises(ValueError, match="at least 1"):
        FailureLimiter.for_workers(0)


def test_the_limiter_is_bounded():
    limiter = FailureLimiter(burst=1, size=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 100


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # one host's /64, one key
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("testclient", None),
        (None, None),
    ],
)
def test_failures_are_counted_per_address_and_ipv6_per_64(host, key):
    assert client_key(host) == key


@pytest.fixture(scope="module")
def owner(client, settings) -> dict[str, str]:
    """An operator token and a provider's, made through the API."""
    operator = bootstrap_operator(settings)["token"]
    made = client.post(
        "/api/v1/organisations",
        headers={"Authorization": f"Bearer {operator}"},
        json={"kind": "provider", "name": f"Limit {uuid.uuid4().hex[:6]}"},
    )
    assert made.status_code == 201, made.text
    return {"operator": operator, "provider": made.json()["token"]}


@pytest.fixture
def address(client) -> Iterator[TestClient]:
    """The application as asked from a fresh documentation address (192.0.2.0/24)."""
    host = f"192.0.2.{uuid.uuid4().int % 250 + 1}"
    with_address = TestClient(client.app, client=(host, 40000))
    client.app.state.context.failures._buckets.pop(host, None)
    yield with_address


def wrong() -> str:
    return tokens.new_token()  # well formed, never issued


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_spraying_wrong_tokens_is_slowed_but_the_owner_never_is(client, address, owner):
    for _ in range(BURST):
        answer = address.get("/api/v1/me", headers=bearer(wrong()))
        assert answer.status_code == 401
    throttled = address.get("/api/v1/me", headers=bearer(wrong()))
    assert throttled.status_code == 429
    assert throttled.headers["content-type"] == PROBLEM
    assert int(throttled.headers["retry-after"]) > 0
    assert throttled.json()["type"] == "urn:ehealthlab:problem:too-many-attempts"
    # a malformed token is a failed check too; a missing one is no attempt at all
    assert address.get("/api/v1/me", headers=bearer("ehl_short")).status_code == 429
    assert address.get("/api/v1/me").status_code == 401
    # the real owner, from the very same address, at once
    for _ in range(3):
        assert address.get("/api/v1/me", headers=bearer(owner["provider"])).status_code == 200
    # another address is not affected by this one's failures
    elsewhere = TestClient(client.app, client=("198.51.100.9", 40000))
    assert elsewhere.get("/api/v1/me", headers=bearer(wrong())).status_code == 401


def test_fhir_and_its_export_routes_answer_429_as_operation_outcomes(address, owner):
    for _ in range(BURST):
        assert address.get("/fhir/Patient", headers=bearer(wrong())).status_code == 401
    for path in ("/fhir/Patient", "/fhir/Observation", "/fhir/$export"):
        throttled = address.get(path, headers=bearer(wrong()))
        assert throttled.status_code == 429, path
        assert throttled.headers["content-type"].startswith(FHIR_JSON)
        assert throttled.json()["issue"][0]["code"] == "throttled"
        assert int(throttled.headers["retry-after"]) > 0
    assert address.get("/fhir/Patient", headers=bearer(owner["provider"])).status_code == 200


def _login(browser: TestClient, token: str):
    form = browser.get("/portal/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf, form.text[:300]
    return browser.post(
        "/portal/login", data={"csrf_token": csrf.group(1), "token": token}, follow_redirects=False
    )


def test_portal_login_is_slowed_too_and_the_owner_still_logs_in(address, owner):
    for _ in range(BURST):
        assert _login(address, wrong()).status_code == 401
    throttled = _login(address, wrong())
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    assert "Too many wrong tokens" in throttled.text
    assert throttled.headers["content-security-policy"].startswith("default-src 'none'")
    logged_in = _login(address, owner["provider"])
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/portal/"


def test_a_token_is_looked_up_by_its_hash_and_compared_as_digests(client, owner, monkeypatch):
    """The plaintext never reaches the database or a comparison: the lookup gets its SHA-256,
    and the only comparison is hmac.compare_digest of two 32-byte digests."""
    looked_up: list[bytes] = []
    compared: list[tuple[bytes, bytes]] = []
    authenticate, compare_digest = token_registry.authenticate, hmac.compare_digest

    def spy_authenticate(conn, token_hash):
        looked_up.append(token_hash)
        return authenticate(conn, token_hash)

    def spy_compare(a, b):
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(token_registry, "authenticate", spy_authenticate)
    monkeypatch.setattr(tokens.hmac, "compare_digest", spy_compare)
    token = owner["provider"]
    digest = hashlib.sha256(token.encode()).digest()
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    assert looked_up == [digest]
    assert compared and all(len(a) == len(b) == 32 for a, b in compared)
    assert (digest, digest) in compared
    assert all(token.encode() not in (a, b) for a, b in compared)
    # a wrong token: looked up by hash too, and never compared in the clear
    looked_up.clear()
    other = wrong()
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 401
    assert looked_up == [hashlib.sha256(other.encode()).digest()]
