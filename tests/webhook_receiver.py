"""A real HTTP server on loopback standing for the operator's webhook: it keeps every POST it
is sent and answers as the test scripts it (a status, a redirect, or holding the answer
until released)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Receiver:
    """What the webhook was sent (`bodies`, parsed), and what it answers next: `answers`
    are taken in order (an int status; "redirect"; "garbage", a line that is not HTTP;
    "trickle", a 200 whose headers come a byte every 0.1 s for 30 s), then 200 for ever.
    While `hold` is clear, answers wait for it to be set."""

    url: str
    answers: list[int | str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pages(self) -> list[dict[str, Any]]:
        """Every page received, in the order received."""
        with self.lock:
            return [page for body in self.bodies for page in body["pages"]]


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.lock:
                receiver.bodies.append(orjson.loads(body))
                answer = receiver.answers.pop(0) if receiver.answers else 200
            receiver.arrived.release()
            receiver.hold.wait(30)
            if answer == "garbage":
                self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                return
            if answer == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(300):
                    try:
                        self.wfile.write(b"X")
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up: as it should
                    time.sleep(0.1)
                return
            if answer == "redirect":
                self.send_response(302)
                self.send_header("Location", receiver.url + "/elsewhere")
            else:
                self.send_response(int(answer))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks/operator")
    receiver.hold.set()
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
