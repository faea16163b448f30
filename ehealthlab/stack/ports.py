"""Free TCP ports on loopback, and starting a server on one.

Asking the kernel for port 0 gives a port that was free a moment ago; another process may take
it before the server binds, so starting retries with a new port when the bind fails.
"""

from __future__ import annotations

import errno
import socket
from typing import Protocol

from ehealthlab.errors import StackError

LOOPBACK = "127.0.0.1"


class PortTakenError(StackError):
    """The server could not bind its port: someone else holds it."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a server could bind `port` now (like the servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def listening_socket(port: int = 0, host: str = LOOPBACK) -> socket.socket:
    """A socket already listening on `host:port` (0: a free port), to hand to a server, so
    that no other process can take the port between choosing it and serving on it.
    PortTakenError when `port` is held; StackError when it cannot be had for another reason
    (a privileged port, an address not of this machine), which another port would not mend."""
    try:
        return socket.create_server((host, port), backlog=2048)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortTakenError(
                f"port {port} on {host} is taken (EADDRINUSE): another process listens there"
            ) from None
        raise StackError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def accepts_connections(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class PortServer(Protocol):
    """A server that listens on `port` and raises PortTakenError when it cannot bind it."""

    port: int

    def start(self) -> None: ...


def start_on_free_port(server: PortServer, attempts: int = 5) -> None:
    """Start `server` on its port if free, else on a new free one; retry lost races."""
    if not port_is_free(server.port):
        server.port = free_port()
    for attempt in range(attempts):
        try:
            server.start()
        except PortTakenError:
            if attempt == attempts - 1:
                raise
            server.port = free_port()
        else:
            return
