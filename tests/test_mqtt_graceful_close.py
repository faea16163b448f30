"""Closing an MQTT socket gracefully (mqtt/common.py `close_gracefully`): a socket closed
while the peer's bytes wait unread in it is reset, and the reset throws away what this side
had written and the peer had not read yet — the DISCONNECT and acknowledgements behind it,
when the broker is slow to read. Shown with real sockets on loopback: a peer that sends
what the client never reads and reads late itself."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ehealthlab.mqtt import BrokerAddress, MqttConnection
from ehealthlab.mqtt.common import GracefulSocket, close_gracefully

UNREAD = 50_000  # bytes the peer sends and the client never reads


def _fill(sock: socket.socket) -> int:
    """Write until the peer's window and this socket's buffer are full: what was written."""
    sock.setblocking(False)
    written = 0
    try:
        while True:
            written += sock.send(b"y" * 65536)
    except BlockingIOError:
        pass
    sock.setblocking(True)
    return written


@pytest.fixture
def slow_peer() -> Iterator[tuple[socket.socket, threading.Event, Callable[[], tuple[int, str]]]]:
    """A connected client socket; an event that lets its peer, which wrote UNREAD bytes to
    it, start reading; and a function telling what the peer received and how its reading
    ended."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    peer.sendall(b"x" * UNREAD)
    go = threading.Event()
    received = [0, "nothing"]

    def read_when_told() -> None:
        go.wait(60)
        try:
            while data := peer.recv(1 << 20):
                received[0] += len(data)
            received[1] = "end of stream"
        except OSError as exc:
            received[1] = type(exc).__name__
        finally:
            peer.close()

    reader = threading.Thread(target=read_when_told)
    reader.start()

    def outcome() -> tuple[int, str]:
        reader.join(60)
        return received[0], received[1]

    try:
        yield client, go, outcome
    finally:
        go.set()
        reader.join(60)
        server.close()


def test_a_plain_close_with_unread_bytes_resets_and_loses_what_was_written(slow_peer) -> None:
    """The hazard itself, so that the test below means something: the peer reads only once
    the client has closed."""
    client, go, outcome = slow_peer
    written = _fill(client)
    client.close()
    go.set()
    received, ended = outcome()
    print("FIGURES plain-close", {"written": written, "received": received, "ended": ended})
    assert ended == "ConnectionResetError"
    assert received < written


def test_a_graceful_close_delivers_everything_written_and_ends_the_stream(slow_peer) -> None:
    """The peer reads only once the client has begun to close (what a slow broker does)."""
    client, go, outcome = slow_peer
    written = _fill(client)
    go.set()
    close_gracefully(client, b"\xe0\x00", timeout_s=30)  # and a DISCONNECT after it
    received, ended = outcome()
    print("FIGURES graceful-close", {"written": written + 2, "received": received, "ended": ended})
    assert (received, ended) == (written + 2, "end of stream")


def test_a_graceful_close_gives_up_waiting_for_a_peer_that_never_closes() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        started = time.monotonic()
        close_gracefully(client, timeout_s=0.5)
        assert 0.4 < time.monotonic() - started < 5
        assert peer.recv(10) == b""  # an orderly end, not a reset
    finally:
        peer.close()
        server.close()


def test_the_platforms_connections_close_gracefully(mosquitto_broker) -> None:
    b = mosquitto_broker
    connection = MqttConnection(
        BrokerAddress(b.host, b.port, b.admin_username, b.admin_password), "graceful-close"
    ).connect()
    try:
        assert isinstance(connection._client.socket(), GracefulSocket)
    finally:
        connection.close()
    assert connection._client.socket() is None
