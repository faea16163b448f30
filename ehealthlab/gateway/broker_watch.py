"""What the broker dropped, recorded: the one loss neither devices nor ingest can see.

Mosquitto 2.0 keeps at most `max_queued_messages` (and `max_queued_bytes` of payload) per
session. Past either it drops new QoS 1 messages for an absent or stalled ingest session
after it has PUBACKed them to the device, so the device never resends them and ingest never
receives them. The broker only counts them, in `$SYS/broker/publish/messages/dropped`
(republished every `sys_interval`, 10 s by default), and logs a NOTICE. The presence leader
subscribes to that counter and records each change in `broker_drops` (migration 0034),
logging an ERROR line and raising a page for the operator (pager.py) when messages were
dropped; the operations dashboard shows them.
Without this the loss would surface only as seq gaps in the conformance check and the
evaluation, blamed on the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from ehealthlab.gateway.operator_pages import broker_drops_page
from ehealthlab.gateway.pager import raise_page
from ehealthlab.store.db import Connection

log = logging.getLogger(__name__)

#: the broker's count of messages dropped since it started (Mosquitto's $SYS)
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


@dataclass(frozen=True, slots=True)
class Drops:
    """One change of the broker's counter: its value and what is new since the last one."""

    total: int
    new: int


def counter_value(payload: bytes) -> int | None:
    """The counter a $SYS payload carries (ASCII digits), or None when it is not one."""
    text = payload.decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


def drops_since(previous_total: int | None, total: int) -> Drops | None:
    """What a new value of the counter says, given the last value recorded; None when
    nothing changed.

    The counter only grows while the broker runs, so a smaller value means the broker started
    again and all of it is new. (A restarted broker that has already dropped as many as its
    predecessor had cannot be told apart: then the difference is taken, an undercount.) With
    nothing recorded before, the whole counter is new: the broker dropped it, and the platform
    has not said so yet.
    """
    if total == previous_total:
        return None
    if previous_total is None or total < previous_total:
        return Drops(total, total)
    return Drops(total, total - previous_total)


def record(conn: Connection, payload: bytes, observed_at: datetime) -> Drops | None:
    """Record the counter a $SYS message carries when it changed; when the broker dropped
    messages since the last value recorded, raise a page for the operator in the same
    transaction and log an ERROR line."""
    total = counter_value(payload)
    if total is None:
        log.warning("broker watch: %s carried %r, not a count", DROPPED_TOPIC, payload[:40])
        return None
    with conn.transaction():
        # one recorder at a time (the presence lock); the row lock only guards a slip
        row = conn.execute(
            "SELECT dropped_total FROM broker_drops ORDER BY id DESC LIMIT 1 FOR UPDATE"
        ).fetchone()
        drops = drops_since(None if row is None else int(row[0]), total)
        if drops is None:
            return None
        conn.execute(
            "INSERT INTO broker_drops (observed_at, dropped_total, dropped) VALUES (%s, %s, %s)",
            (observed_at, drops.total, drops.new),
        )
        if drops.new:
            raise_page(conn, broker_drops_page(drops.new, drops.total), observed_at)
    if drops.new:
        log.error(
            "the broker dropped %d message(s) (%d since it started): a session's queue is full"
            " (max_queued_messages or max_queued_bytes); they were acknowledged to their"
            " devices and are lost."
            " Is ingest running and keeping up? (docs/reliability-faults.md §3)",
            drops.new,
            drops.total,
        )
    return drops
