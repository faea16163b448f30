"""`again_when_dropped`: an operation the broker dropped is tried again, nothing else is."""

from __future__ import annotations

import pytest

from ehealthlab.errors import AuthenticationError
from ehealthlab.mqtt import common
from ehealthlab.mqtt.common import (
    DROPPED_ATTEMPTS,
    ConnectionLostError,
    MqttError,
    again_when_dropped,
)


class Flaky:
    """Raises each of `failures` in turn, then answers."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "DROPPED_PAUSE_S", 0.0)


def lost() -> ConnectionLostError:
    return ConnectionLostError("subscribe to 'x': the connection was lost")


@pytest.mark.parametrize("drops", range(DROPPED_ATTEMPTS))
def test_drops_short_of_the_attempts_are_tried_again(drops: int) -> None:
    operation = Flaky(*(lost() for _ in range(drops)))
    assert again_when_dropped(operation) == "done"
    assert operation.calls == drops + 1


def test_a_broker_that_keeps_dropping_is_reported_after_the_last_attempt() -> None:
    operation = Flaky(*(lost() for _ in range(DROPPED_ATTEMPTS)))
    with pytest.raises(ConnectionLostError):
        again_when_dropped(operation)
    assert operation.calls == DROPPED_ATTEMPTS


@pytest.mark.parametrize(
    "failure",
    [
        MqttError("no answer from the broker within 10 s"),
        AuthenticationError("the broker refused 'x': Not authorized"),
        ValueError("a mistake of the caller"),
    ],
    ids=["timeout", "refused", "other"],
)
def test_anything_but_a_drop_is_raised_at_once(failure: Exception) -> None:
    operation = Flaky(failure)
    with pytest.raises(type(failure)):
        again_when_dropped(operation)
    assert operation.calls == 1
