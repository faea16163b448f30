"""What the demo's chapters share: printing, waiting on a condition, calling the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ehealthlab.api.client import GatewayClient
from ehealthlab.errors import StackError
from ehealthlab.simulators.commands import progress_bar

__all__ = ["api", "progress_bar", "say", "wait_until"]


def say(line: str) -> None:
    """One line of the story, on standard output (progress bars go to standard error)."""
    print(line, flush=True)


def wait_until(done: Callable[[], bool], *, what: str, timeout_s: float = 120.0) -> None:
    """Poll until `done()`; a loaded machine only makes it slower, and if it never comes
    the demo says what it was waiting for instead of printing a partial picture."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise StackError(f"waited {timeout_s:.0f} s for {what}; is ingest running?")
        time.sleep(0.1)


def api(url: str, token: str, method: str, path: str, body: object = None) -> Any:
    client = GatewayClient(url, token)
    return client.get("/api/v1" + path) if method == "GET" else client.post("/api/v1" + path, body)
