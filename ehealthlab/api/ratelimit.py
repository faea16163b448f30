"""Slowing down whoever sprays wrong API tokens, without ever slowing the tokens' owners.

Failed token checks are counted per client (its address; a whole IPv6 /64, which one host
usually holds) in a token bucket: BURST failures pass as plain 401s, then the bucket refills
at REFILL_PER_S, and a failure from an empty bucket is answered 429 with `Retry-After`.
Failures while throttled still count (down to -BURST), so a client that ignores
`Retry-After` stays throttled, for at most 2 * burst / refill seconds of its worker's share
(120 s for one worker; 6 * N * (ceil(BURST / N) + 1) s for N).

Only failures are counted and a token is always checked, throttled or not: a correct token
passes at once whatever its address did (no lockout of the real owner behind the same NAT as
an attacker). API tokens carry no public identifying part (`ehl_` and 256 random bits), so
there is no per-token key besides the address; guessing one is hopeless anyway, and what the
limit protects is the database's time and the logs' signal.

Each API process keeps its own limiter in memory, and `ehealthlab api --workers N` gives each
1/N of the budget (`for_workers`): ceil(BURST / N) failures at once and REFILL_PER_S / N
earned back. The kernel spreads a client's connections over the workers as it likes, so
however they land an address gets at most N * ceil(BURST / N) failures (BURST, or a few more;
N itself past BURST workers, where each keeps one) as plain 401s in all, and earns back no
more than REFILL_PER_S, as one process would give it — without a database write per
failure, the load the limit is there to shed. A client whose
every request reaches one worker (one kept-alive connection) is throttled sooner, after
ceil(BURST / N): stricter, never looser. docs/reliability-security.md.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

#: failed checks a client may make at once before being throttled
BURST = 10
#: failed checks a client earns back per second (one every 6 s)
REFILL_PER_S = 1 / 6
#: clients remembered at most (the least recently failing are forgotten first)
SIZE = 65_536


def client_key(host: str | None) -> str | None:
    """Whom failures are counted against: an IPv4 address or an IPv6 address's /64. None for
    a client with no IP address (a Unix socket's peer without a proxy's header, Starlette's
    test client): there is nothing to key by, and one key shared by all would let one
    attacker throttle every failed check of everyone."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Token buckets of failed checks, one per client key; bounded and thread-safe."""

    def __init__(
        self,
        burst: int = BURST,
        refill_per_s: float = REFILL_PER_S,
        size: int = SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_per_s = refill_per_s
        self.size = size
        self.clock = clock
        #: key -> (credit, when it was last computed)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_workers(
        cls,
        workers: int,
        *,
        burst: int = BURST,
        refill_per_s: float = REFILL_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> FailureLimiter:
        """One worker's share of the budget when `workers` processes serve the API: the
        burst and the refill divided between them (the burst rounded up, so one worker of
        one keeps all of it and no worker gets none)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        return cls(
            burst=math.ceil(burst / workers), refill_per_s=refill_per_s / workers, clock=clock
        )

    def _credit(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        credit, then = entry
        return min(float(self.burst), credit + (now - then) * self.refill_per_s)

    def failed(self, key: str | None) -> int:
        """Count one failed check; the seconds the client must wait before its next failure
        is answered as one (0: not throttled, answer this one with a plain 401)."""
        if key is None:
            return 0
        with self._lock:
            now = self.clock()
            credit = self._credit(key, now)
            throttled = credit < 1
            credit = max(credit - 1, -float(self.burst))
            self._buckets[key] = (credit, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.size:
                self._buckets.popitem(last=False)
        if not throttled:
            return 0
        return max(1, math.ceil((1 - credit) / self.refill_per_s))

    def __len__(self) -> int:
        return len(self._buckets)
