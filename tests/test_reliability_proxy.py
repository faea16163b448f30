"""The fault proxy on its own, against a loopback echo server: each mode does what the
reliability tests rely on it doing (quick; no broker, no database)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from faultproxy import BLACKHOLE, PASS, RESET, FaultProxy, drip, latency


class EchoServer:
    """Echoes whatever each connection sends, on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.received += len(data)
                try:
                    conn.sendall(data)
                except OSError:
                    return


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = EchoServer()
    with FaultProxy(server.port) as p:
        p.echo = server  # type: ignore[attr-defined]
        yield p
    server.sock.close()


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=30)


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def eventually(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_pass_forwards_both_ways_intact(proxy):
    payload = bytes(range(256)) * 1000
    with connect(proxy) as sock:
        sock.sendall(payload)
        assert receive(sock, len(payload)) == payload
    assert proxy.counters.accepted == 1


def test_latency_delays_each_way_and_keeps_order(proxy):
    proxy.set_mode(latency(150))
    with connect(proxy) as sock:
        started = time.monotonic()
        for i in range(5):
            sock.sendall(bytes([i]) * 10)
        assert receive(sock, 50) == b"".join(bytes([i]) * 10 for i in range(5))
        assert time.monotonic() - started >= 0.3  # 150 ms there, 150 ms back, at least


def test_a_blackhole_reads_and_forwards_nothing_then_pass_serves_new_connections(proxy):
    with connect(proxy) as old:
        old.sendall(b"before")
        assert receive(old, 6) == b"before"
        proxy.set_mode(BLACKHOLE)
        old.sendall(b"x" * 1000)  # acknowledged by TCP, thrown away by the proxy
        with connect(proxy) as new:
            new.sendall(b"y" * 500)
            assert eventually(lambda: proxy.counters.discarded_bytes == 1500)
            new.settimeout(0.3)
            with pytest.raises(TimeoutError):
                new.recv(1)
        assert proxy.echo.received == 6  # type: ignore[attr-defined]
    proxy.set_mode(PASS)
    with connect(proxy) as sock:
        sock.sendall(b"after")
        assert receive(sock, 5) == b"after"


def test_reset_sends_rst_to_open_connections_and_to_new_ones(proxy):
    with connect(proxy) as sock:
        sock.sendall(b"ping")
        assert receive(sock, 4) == b"ping"
        assert eventually(lambda: proxy.connections() == 1)
        proxy.set_mode(RESET)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.sendall(b"more")
            sock.recv(1)
    with pytest.raises((ConnectionResetError, BrokenPipeError)), connect(proxy) as sock:
        sock.sendall(b"x")
        sock.recv(1)
    assert proxy.counters.reset >= 2
    proxy.set_mode(PASS)
    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert receive(sock, 4) == b"back"


def test_drip_forwards_a_few_bytes_at_a_time_and_loses_none(proxy):
    proxy.set_mode(drip(size=8, every_ms=10))
    payload = bytes(range(200))
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        assert receive(sock, len(payload)) == payload
        # 25 slices each way, 24 pauses of 10 ms at least between them
        assert time.monotonic() - started >= 0.24


def test_the_proxy_only_forwards_to_loopback():
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(5432, target_host="10.0.0.1")
