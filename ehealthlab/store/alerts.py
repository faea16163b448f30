"""Alerts in the store: raising (idempotent per patient, rule and day), the weight history
the weight-gain rule needs, listing and acknowledging."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from uuid import UUID

from ehealthlab.store.db import Connection
from ehealthlab.store.readings import AttributedRow


@dataclass(frozen=True, slots=True)
class AlertRow:
    patient_id: UUID
    rule: str
    day: date
    device_id: str
    metric: str
    at: datetime
    value: float
    measured_at: datetime
    raised_at: datetime


def raise_alerts(conn: Connection, alerts: Sequence[AlertRow]) -> int:
    """Insert alerts not raised yet for their (patient, rule, day); returns how many were new."""
    if not alerts:
        return 0
    # in one order, so two transactions inserting the same keys cannot deadlock
    alerts = sorted(alerts, key=lambda a: (str(a.patient_id), a.rule, a.day))
    cur = conn.execute(
        "INSERT INTO alerts (patient_id, rule, day, device_id, metric, at, value, measured_at,"
        " raised_at)"
        " SELECT * FROM unnest(%b::uuid[], %b::text[], %b::date[], %b::text[], %b::text[],"
        " %b::timestamptz[], %b::float8[], %b::timestamptz[], %b::timestamptz[])"
        " ON CONFLICT (patient_id, rule, day) DO NOTHING",
        (
            [a.patient_id for a in alerts], [a.rule for a in alerts], [a.day for a in alerts],
            [a.device_id for a in alerts], [a.metric for a in alerts], [a.at for a in alerts],
            [a.value for a in alerts], [a.measured_at for a in alerts],
            [a.raised_at for a in alerts],
        ),
    )  # fmt: skip
    return cur.rowcount


#: advisory-lock namespace of per-patient alert evaluation ("EHLP")
_PATIENT_LOCK_CLASS = 0x45484C50


def lock_patients(conn: Connection, patient_ids: Sequence[UUID]) -> None:
    """Transaction-scoped locks on these patients' alert evaluation, taken in one order."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s, h) FROM (SELECT DISTINCT hashtext(p::text) AS h"
        " FROM unnest(%b::uuid[]) AS p) AS s ORDER BY h",
        (_PATIENT_LOCK_CLASS, list(patient_ids)),
    )


def weight_history(
    conn: Connection, patient_ids: Sequence[UUID], since: datetime, until: datetime
) -> dict[UUID, list[AttributedRow]]:
    """Accepted weights of these patients measured in [since, until]."""
    history: dict[UUID, list[AttributedRow]] = {}
    if not patient_ids:
        return history
    rows = conn.execute(
        "SELECT patient_id, device_id, metric, at, value, measured_at, received_at FROM readings"
        " WHERE patient_id = ANY(%b) AND metric = 'body_weight'"
        " AND measured_at BETWEEN %s AND %s",
        (list(patient_ids), since, until),
    ).fetchall()
    for patient_id, device_id, metric, at, value, measured_at, received_at in rows:
        history.setdefault(patient_id, []).append(
            AttributedRow(patient_id, device_id, metric, at, float(value), measured_at, received_at)
        )
    return history


def weight_window(measured: Sequence[datetime], window: timedelta) -> tuple[datetime, datetime]:
    """The span of history that covers every reading's window before and after it (a new
    weight is compared with earlier ones, and later ones are compared with it)."""
    return min(measured) - window, max(measured) + window


@dataclass(frozen=True, slots=True)
class StoredAlert:
    id: UUID
    patient_id: UUID
    rule: str
    day: date
    device_id: str
    metric: str
    at: datetime
    value: float
    measured_at: datetime
    raised_at: datetime
    acknowledged_at: datetime | None


_ALERT_COLUMNS = (
    "a.id, a.patient_id, a.rule, a.day, a.device_id, a.metric, a.at, a.value, a.measured_at,"
    " a.raised_at, a.acknowledged_at"
)


def list_alerts(
    conn: Connection, organisation_id: UUID | None, *, only_open: bool, limit: int
) -> list[StoredAlert]:
    """Alerts of one provider's patients (organisation_id) or of everyone (None), newest first."""
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts a JOIN patients p ON p.id = a.patient_id"  # noqa: S608 - constant columns
        " WHERE (%(org)s::uuid IS NULL OR p.organisation_id = %(org)s)"
        " AND (NOT %(open)s OR a.acknowledged_at IS NULL)"
        " ORDER BY a.raised_at DESC, a.id LIMIT %(limit)s",
        {"org": organisation_id, "open": only_open, "limit": limit},
    ).fetchall()
    return [StoredAlert(*row) for row in rows]


def acknowledge_alert(
    conn: Connection, alert_id: UUID, organisation_id: UUID, token_id: UUID
) -> StoredAlert | None:
    """Acknowledge one of a provider's alerts (idempotent: the first acknowledgement stays);
    None when the alert is not among that provider's."""
    row = conn.execute(
        "UPDATE alerts a SET acknowledged_at = COALESCE(a.acknowledged_at, now()),"  # noqa: S608
        " acknowledged_by = COALESCE(a.acknowledged_by, %s)"
        " FROM patients p WHERE a.id = %s AND p.id = a.patient_id AND p.organisation_id = %s"
        f" RETURNING {_ALERT_COLUMNS}",
        (token_id, alert_id, organisation_id),
    ).fetchone()
    return None if row is None else StoredAlert(*row)
