"""`again_when_dropped`: an operation the broker dropped is tried again, nothing else is; and
what a connection raises, a drop, a refusal or silence, against a socket on loopback."""

from __future__ import annotations

import socket
import threading

import pytest

from ehealthlab.errors import AuthenticationError
from ehealthlab.mqtt import BrokerAddress, MqttConnection, common
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


# -- how MqttConnection tells a drop from a refusal and from silence, against a socket ------

#: MQTT 5 CONNACK: no session present, reason 0x86 (bad user name or password), no properties
CONNACK_BAD_PASSWORD = b"\x20\x03\x00\x86\x00"


class FakeBroker:
    """A loopback server that reads a client's CONNECT, then does one thing to it."""

    def __init__(self, answer: bytes | None, *, close: bool) -> None:
        self._answer, self._close = answer, close
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        client, _ = self._server.accept()
        with client:
            client.recv(1024)  # the CONNECT
            if self._answer is not None:
                client.sendall(self._answer)
            if not self._close:
                self._done.wait(30)  # silent until the test is over

    def stop(self) -> None:
        self._done.set()
        self._thread.join(10)
        self._server.close()


@pytest.mark.parametrize(
    ("answer", "close", "raised"),
    [
        (None, True, ConnectionLostError),  # closed as it connected: a drop, tried again
        (CONNACK_BAD_PASSWORD, True, AuthenticationError),  # refused, then closed
        (None, False, MqttError),  # silent: no answer in time, never tried again
    ],
    ids=["dropped", "refused", "silent"],
)
def test_a_connection_says_why_it_failed(
    answer: bytes | None, close: bool, raised: type[Exception]
) -> None:
    broker = FakeBroker(answer, close=close)
    try:
        connection = MqttConnection(BrokerAddress("127.0.0.1", broker.port), "probe")
        with pytest.raises(raised) as caught:
            connection.connect(timeout=1.0)
    finally:
        broker.stop()
    assert type(caught.value) is raised, caught.value
