"""`batch_wait_left`: a batch's wait to fill counts from the broker's receipt of its first
message, so what came while the last batch was stored is not held a whole wait more."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.ingest.worker import batch_wait_left
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
