"""Dead letters: rejected readings and unparsable messages, kept with their reason.

Nothing a device sends is silently dropped: what ingest cannot accept lands here with its raw
bytes, so a start-up can read why (gateway API) and indicators can count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ehealthlab.store.db import Connection


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """One rejection: a reading (item_index set) or a whole message (item_index None)."""

    received_at: datetime
    device_id: str
    reason: str
    detail: str
    payload: bytes
    msg_id: str | None = None
    item_index: int | None = None
    seq: int | None = None
    metric: str | None = None
    at: datetime | None = None
    measured_at: datetime | None = None


_INSERT = """
    INSERT INTO rejected_readings (received_at, device_id, msg_id, item_index, seq, metric, at,
                                   measured_at, reason, detail, payload, payload_bytes)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def write_rejections(conn: Connection, rows: Sequence[RejectedRow]) -> int:
    """Store rejections in the caller's transaction; returns how many were stored."""
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            _INSERT,
            [
                (r.received_at, r.device_id, r.msg_id, r.item_index, r.seq, r.metric, r.at,
                 r.measured_at, r.reason, r.detail, r.payload, len(r.payload))
                for r in rows
            ],
        )  # fmt: skip
    return len(rows)


def recent_rejections(conn: Connection, device_id: str, limit: int = 100) -> list[RejectedRow]:
    """A device's latest rejections, newest first (what the start-up reads in the API)."""
    rows = conn.execute(
        "SELECT received_at, device_id, reason, detail, payload, msg_id, item_index, seq,"
        " metric, at, measured_at FROM rejected_readings WHERE device_id = %s"
        " ORDER BY received_at DESC, id DESC LIMIT %s",
        (device_id, limit),
    ).fetchall()
    return [RejectedRow(*row) for row in rows]


def rejection_counts(
    conn: Connection, device_ids: Sequence[str], since: datetime
) -> dict[str, int]:
    """How many rejections each device had since `since` (devices with none are absent): what
    a start-up's fleet list shows beside each device."""
    rows = conn.execute(
        "SELECT device_id, count(*) FROM rejected_readings"
        " WHERE device_id = ANY(%s) AND received_at >= %s GROUP BY device_id",
        (list(device_ids), since),
    ).fetchall()
    return {device_id: count for device_id, count in rows}
