"""What the store saw of one device over a window, for the conformance check."""

from __future__ import annotations

from datetime import datetime

from ehealthlab.errors import NotFoundError
from ehealthlab.gateway.conformance import MessageSeen, Observations, RejectionSeen, StatusSeen
from ehealthlab.store.db import Connection


def observe(conn: Connection, device_id: str, since: datetime, until: datetime) -> Observations:
    """Everything received from `device_id` in [since, until)."""
    device = conn.execute(
        "SELECT device_type, status FROM devices WHERE device_id = %s", (device_id,)
    ).fetchone()
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    window = (device_id, since, until)
    messages = [
        MessageSeen(*row)
        for row in conn.execute(
            "SELECT received_at, msg_id, qos, payload_bytes, readings, accepted, duplicates,"
            " rejected, clock_offset_s, oldest_at, newest_at FROM device_messages"
            " WHERE device_id = %s AND received_at >= %s AND received_at < %s"
            " ORDER BY received_at, id",
            window,
        ).fetchall()
    ]
    rejections = [
        RejectionSeen(*row)
        for row in conn.execute(
            "SELECT received_at, reason, detail, seq, item_index, msg_id FROM rejected_readings"
            " WHERE device_id = %s AND received_at >= %s AND received_at < %s"
            " ORDER BY received_at, id",
            window,
        ).fetchall()
    ]
    seqs = [
        int(seq)
        for (seq,) in conn.execute(
            "SELECT seq FROM readings WHERE device_id = %(d)s"
            " AND received_at >= %(s)s AND received_at < %(u)s"
            " UNION SELECT seq FROM duplicate_readings WHERE device_id = %(d)s"
            " AND received_at >= %(s)s AND received_at < %(u)s"
            " UNION SELECT seq FROM rejected_readings WHERE device_id = %(d)s"
            " AND seq IS NOT NULL AND received_at >= %(s)s AND received_at < %(u)s",
            {"d": device_id, "s": since, "u": until},
        ).fetchall()
    ]
    status_events = [
        StatusSeen(*row)
        for row in conn.execute(
            "SELECT received_at, status, retained FROM device_status_events"
            " WHERE device_id = %s AND received_at >= %s AND received_at < %s"
            " ORDER BY received_at, id",
            window,
        ).fetchall()
    ]
    return Observations(
        device_id=device_id,
        device_type=str(device[0]),
        window_from=since,
        window_to=until,
        messages=messages,
        rejections=rejections,
        seqs=seqs,
        status_events=status_events,
        current_status=str(device[1]),
    )
