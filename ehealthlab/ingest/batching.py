"""How an ingest worker fills a batch: how long it may wait, and how it waits.

A batch is stored when its wait is over (or it is full), not before, so nothing is gained by
taking each message the moment it arrives. Woken by every message, a worker at a steady
load spent most of its CPU on the wake-ups: at 5,000 msg/s over two workers, about fifty
`select`s and reads a batch of fifty messages, 84-96 µs of CPU a message against 31 µs when
it drained a backlog (bench/ingest.py). Here a batch being filled looks for what has come
every `FILL_CHECK_S` instead: at most a handful of wake-ups a batch, whatever the rate. The
messages wait in the socket meanwhile, and the batch closes at the same moment.

Pure: the clock, the sleep and the source of messages are the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from ehealthlab.mqtt import ReceivedMessage

T = TypeVar("T")

#: how often a batch being filled takes what has arrived
FILL_CHECK_S = 0.005


def batch_wait_left(first: ReceivedMessage, wait_s: float, now: datetime) -> float:
    """How long a batch begun with `first` may still wait to fill: the wait counts from when
    the broker received that message, not from when this worker got to it, so that what came
    while the last batch was being stored is not held a whole wait more. Within [0, wait_s]
    (the broker's clock may not be quite ours); the whole wait without the broker's stamp."""
    if not first.broker_stamped:
        return wait_s
    waited = (now - first.received_at).total_seconds()
    return min(wait_s, max(0.0, wait_s - waited))


def fill_batch(
    first: T,
    take_now: Callable[[], T | None],
    readings_of: Callable[[T], int],
    *,
    wait_s: float,
    max_messages: int,
    max_readings: int,
    check_s: float = FILL_CHECK_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[T]:
    """A batch begun with `first`: what `take_now` gives (without waiting; None when nothing
    has come) until `wait_s` is over or the batch holds `max_messages` messages or
    `max_readings` readings, looking every `check_s`. Past the wait, what has already come
    still joins the batch: no waiting for more, but no batch of one while messages are
    queued (a wait of 0 is then pure natural batching)."""
    batch = [first]
    readings = readings_of(first)
    deadline = clock() + wait_s
    while len(batch) < max_messages and readings < max_readings:
        item = take_now()
        if item is not None:
            batch.append(item)
            readings += readings_of(item)
            continue
        left = deadline - clock()
        if left <= 0:
            break
        sleep(min(left, check_s))
    return batch
