"""`batch_wait_left`: a batch's wait to fill counts from the broker's receipt of its first
message, so what came while the last batch was stored is not held a whole wait more."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.ingest.batching import batch_wait_left, fill_batch
from ehealthlab.mqtt import ReceivedMessage

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
WAIT_S = 0.02


def received(ago_s: float, *, stamped: bool = True) -> ReceivedMessage:
    at = NOW - timedelta(seconds=ago_s)
    return ReceivedMessage("t", b"{}", 1, False, 1, at, broker_stamped=stamped)


@pytest.mark.parametrize(
    ("ago_s", "stamped", "left_s"),
    [
        (0.0, True, 0.02),  # just arrived: the whole wait
        (0.005, True, 0.015),  # came 5 ms ago, while the last batch was stored
        (0.02, True, 0.0),  # waited its whole wait already: the batch closes now
        (3.0, True, 0.0),  # held by the broker (a backlog): no wait at all
        (-0.5, True, 0.02),  # the broker's clock ahead of ours: never more than the wait
        (3.0, False, 0.02),  # our own read time: nothing known of before it
    ],
    ids=["new", "5 ms old", "a wait old", "backlog", "broker ahead", "unstamped"],
)
def test_the_wait_left(ago_s: float, stamped: bool, left_s: float) -> None:
    assert batch_wait_left(received(ago_s, stamped=stamped), WAIT_S, NOW) == pytest.approx(left_s)


@given(
    ago_s=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    wait_s=st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
)
def test_the_wait_left_is_within_the_wait(ago_s: float, wait_s: float) -> None:
    assert 0.0 <= batch_wait_left(received(ago_s), wait_s, NOW) <= wait_s


# -- filling a batch: what joins it, and how often it looks ----------------------------------


class Arrivals:
    """Messages arriving at given moments on a fake clock that only sleeping moves."""

    def __init__(self, moments: list[float]) -> None:
        self.now = 0.0
        self.pending = sorted(moments)
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def take_now(self) -> float | None:
        if self.pending and self.pending[0] <= self.now:
            return self.pending.pop(0)
        return None


def fill(moments: list[float], *, wait_s: float = 0.02, max_messages: int = 1000,
         max_readings: int = 10_000) -> tuple[list[float], Arrivals]:  # fmt: skip
    arrivals = Arrivals(moments)
    batch = fill_batch(
        -1.0, arrivals.take_now, lambda _: 1, wait_s=wait_s, max_messages=max_messages,
        max_readings=max_readings, check_s=0.005, clock=arrivals.clock, sleep=arrivals.sleep,
    )  # fmt: skip
    return batch, arrivals


@pytest.mark.parametrize(
    ("moments", "kwargs", "size", "closed_at"),
    [
        # fifty messages over the wait: all join, and the batch closes at the wait's end
        ([i * 0.0004 for i in range(50)], {}, 51, 0.02),
        # queued already: taken without waiting, and no wait after them
        ([0.0] * 30, {"wait_s": 0.0}, 31, 0.0),
        # the wait over: what comes after it is for the next batch
        ([0.001, 0.019, 0.021, 0.03], {}, 3, 0.02),
        # full before the wait's end: it closes at the look that fills it
        ([i * 0.0001 for i in range(100)], {"max_messages": 10}, 10, 0.005),
        ([i * 0.001 for i in range(100)], {"max_readings": 8}, 8, 0.01),
    ],
    ids=["steady", "backlog", "late ones", "full", "readings"],
)
def test_what_joins_a_batch_and_when_it_closes(moments, kwargs, size, closed_at):
    batch, arrivals = fill(moments, **kwargs)
    assert len(batch) == size  # the first message included
    assert arrivals.now == pytest.approx(closed_at)


@given(
    moments=st.lists(st.floats(min_value=0.0, max_value=0.05), max_size=300),
    wait_s=st.floats(min_value=0.0, max_value=0.05),
)
def test_a_batch_looks_a_handful_of_times_and_closes_at_its_wait(moments, wait_s):
    """However many messages come, a batch sleeps at most once a `check_s` of its wait, never
    past the wait, and takes every message that came before its wait's end."""
    batch, arrivals = fill(moments, wait_s=wait_s)
    assert len(arrivals.sleeps) <= wait_s / 0.005 + 1
    assert arrivals.now <= wait_s + 1e-9
    came = [m for m in moments if m <= wait_s]
    assert sorted(batch[1:]) == sorted(came)
