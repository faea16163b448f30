"""A fault-injecting TCP proxy for the reliability tests: 127.0.0.1 only, switchable while
connections are open.

Put it between a client and a server (devices and the broker, ingest and PostgreSQL) and
change its mode during a run:

- `PASS`: forward both ways as they come;
- `latency(ms)`: hold every chunk `ms` before forwarding it (order kept);
- `BLACKHOLE`: accept, read and throw away both ways, never forward — what a middlebox
  eating traffic does: the sender's TCP sees its bytes acknowledged, so only an
  application-level timeout (MQTT keepalive, a statement timeout) can tell;
- `RESET`: every open connection is reset (SO_LINGER 0, so the peers get RST, not FIN),
  and each new one is reset as soon as it is accepted;
- `drip(size, every_ms)`: forward `size` bytes at a time, one slice every `every_ms`.

A connection that lost bytes in a blackhole stays open afterwards, as over a real faulty
path: what its endpoints make of the corrupt stream is part of what the tests observe.

Runs an asyncio loop on a daemon thread, so tests drive it from plain code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
_CHUNK = 65536


@dataclass(frozen=True)
class Mode:
    """What the proxy does to traffic; build with the constants and helpers below."""

    name: str
    latency_s: float = 0.0
    drip_bytes: int = 0
    drip_every_s: float = 0.0


PASS = Mode("pass")
BLACKHOLE = Mode("blackhole")
RESET = Mode("reset")


def latency(ms: float) -> Mode:
    return Mode("latency", latency_s=ms / 1000)


def drip(size: int = 16, every_ms: float = 20) -> Mode:
    return Mode("drip", drip_bytes=size, drip_every_s=every_ms / 1000)


@dataclass
class ProxyCounters:
    """What the proxy saw, for the tests' figures."""

    accepted: int = 0
    reset: int = 0
    forwarded_bytes: int = 0
    discarded_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST: linger on, timeout 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Listen on 127.0.0.1:`port` (a free one by default) and forward to `target_port`."""

    def __init__(self, target_port: int, target_host: str = LOOPBACK) -> None:
        if target_host != LOOPBACK:
            raise ValueError("the fault proxy forwards to loopback only")
        self.target = (target_host, target_port)
        self.mode: Mode = PASS
        self.counters = ProxyCounters()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port: int = self._call(self._listen())

    # -- control, from any thread ----------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """Switch now; RESET also resets every open connection before returning."""
        self.mode = mode
        if mode.name == "reset":
            self._call(self._reset_all())

    def connections(self) -> int:
        return self._call(self._count())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    # -- the loop ------------------------------------------------------------------------

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _count(self) -> int:
        return len(self._pairs)

    async def _reset_all(self) -> None:
        for client, upstream in list(self._pairs):
            _rst(client)
            _rst(upstream)
            with self.counters.lock:
                self.counters.reset += 1
        self._pairs.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.counters.lock:
            self.counters.accepted += 1
        if self.mode.name == "reset":
            _rst(writer)
            with self.counters.lock:
                self.counters.reset += 1
            return
        if self.mode.name == "blackhole":  # nobody behind: read and forget
            await self._pump(reader, None)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            for side in pair:
                if not side.transport.is_closing():
                    side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        """One direction: read, and forward (or not) as the current mode says. Chunks wait
        in a queue for their due time, so latency delays without reordering."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer)) if writer is not None else None
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                mode = self.mode
                if writer is None or mode.name in ("blackhole", "reset"):
                    with self.counters.lock:
                        self.counters.discarded_bytes += len(data)
                    continue
                queue.put_nowait((time.monotonic() + mode.latency_s, data))
        finally:
            if sender is not None:
                queue.put_nowait(None)
                with contextlib.suppress(Exception):
                    await sender
            if writer is not None and not writer.transport.is_closing():
                writer.close()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            while data:
                mode = self.mode
                size = mode.drip_bytes if mode.name == "drip" else len(data)
                piece, data = data[:size], data[size:]
                if writer.transport.is_closing():
                    return
                writer.write(piece)
                try:
                    await writer.drain()
                except (ConnectionError, OSError):
                    return
                with self.counters.lock:
                    self.counters.forwarded_bytes += len(piece)
                if data and mode.name == "drip":
                    await asyncio.sleep(mode.drip_every_s)
