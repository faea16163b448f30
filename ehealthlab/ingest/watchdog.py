"""A deadline on each batch's database work, kept by one thread for the worker's life.

Nothing bounds a statement once sent: a link that swallows packets or a server that stopped
answering would hold a worker for ever. So a batch is armed with a deadline, and a batch
still running past it gets `on_overdue` called with its connection (the worker then shuts
the socket down, and the batch is retried on a new connection).

One long-lived thread instead of a `threading.Timer` a batch, which started a thread for
every batch (about 5 % of a worker at capacity in a profile; below the noise end to end,
docs/benchmarks.md 2026-12-07). Arming and disarming
here only set a field under a lock; the thread never needs waking early, because it sleeps
at most until the earliest deadline it could have missed (see `_run`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("ehealthlab.ingest")


class BatchWatchdog(Generic[T]):
    """Calls `on_overdue(subject)` when a batch armed with `subject` runs past `timeout_s`."""

    def __init__(self, timeout_s: float, on_overdue: Callable[[T], None], name: str) -> None:
        if timeout_s <= 0:
            raise ValueError("a batch's deadline must be positive")
        self.timeout_s = timeout_s
        self._on_overdue = on_overdue
        self._name = name
        self._wake = threading.Condition(threading.Lock())
        self._armed: tuple[float, T] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self, subject: T) -> None:
        """A batch starts on `subject`: it must be done within the timeout."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the watchdog is closed")
            self._armed = (time.monotonic() + self.timeout_s, subject)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def disarm(self) -> None:
        """The batch is done (stored or failed): nothing is overdue any more. Once this
        returns, `on_overdue` is not called for that batch (it may be running now, not later)."""
        with self._wake:
            self._armed = None

    def close(self) -> None:
        """Stop the thread (an armed batch is then not watched any more)."""
        with self._wake:
            self._closed = True
            self._armed = None
            self._wake.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        """Sleep until the armed deadline, or for a whole timeout when nothing is armed.

        Never late: a batch armed while the thread sleeps unarmed from time t has its
        deadline after t + timeout, when the thread wakes anyway; a batch re-armed while it
        sleeps towards a deadline has a later deadline, which it finds on waking.
        """
        with self._wake:
            while not self._closed:
                armed = self._armed
                if armed is None:
                    self._wake.wait(self.timeout_s)
                    continue
                deadline, subject = armed
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
                self._armed = None
                # under the lock, so that once `disarm` returns nothing fires for that batch
                try:
                    self._on_overdue(subject)
                except Exception:  # the watch goes on for the next batches
                    log.exception("%s: the overdue batch's handler failed", self._name)
