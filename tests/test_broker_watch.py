"""The broker watch's reading of Mosquitto's dropped-messages counter (gateway/broker_watch.py):
what each new value says was lost. Recording it is tested in the store by the operations
dashboard's tests, and end to end past a real broker's queue limit in
tests/test_reliability_memory.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.gateway.broker_watch import Drops, counter_value, drops_since


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"0", 0), (b"5002", 5002), (b" 17\n", 17), (b"", None), (b"-1", None), (b"1.5", None),
     (b"seventeen", None), (b"\xff", None)],
)  # fmt: skip
def test_counter_value(payload, expected):
    assert counter_value(payload) == expected


@pytest.mark.parametrize(
    ("previous", "total", "expected"),
    [
        (None, 0, Drops(0, 0)),  # the first count seen is recorded, even when nothing dropped
        (None, 40, Drops(40, 40)),  # dropped before anyone watched: news all the same
        (40, 40, None),  # unchanged: nothing to record
        (40, 45, Drops(45, 5)),
        (45, 3, Drops(3, 3)),  # smaller: the broker started again, all of it is new
        (45, 0, Drops(0, 0)),  # started again, nothing dropped yet: the new baseline
    ],
)
def test_drops_since(previous, total, expected):
    assert drops_since(previous, total) == expected


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=50))
def test_within_one_broker_run_what_is_new_adds_up_to_the_count(increments):
    """While the broker runs its counter only grows: the news recorded, from the first value
    seen, adds up to the last value."""
    previous: int | None = None
    news = 0
    total = 0
    for increment in increments:
        total += increment
        drops = drops_since(previous, total)
        if drops is not None:
            news += drops.new
            previous = drops.total
    assert news == total
