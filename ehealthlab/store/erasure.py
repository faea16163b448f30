"""Erasure of one patient (GDPR art. 17): everything of theirs deleted, a record kept.

One transaction deletes the patient's readings (their FHIR Observations) — subtracted from the
start-ups' rollups, with the hourly rollup and each device's newest reading computed again —
the rejected and duplicate readings of their devices on their enrolled days (the raw bytes of
a rejected reading hold a value), their alerts, daily rollup rows, SUS responses
(QuestionnaireResponses), enrolments and the `patients` row (the FHIR Patient). Bulk exports
that may hold them (their provider's, and every provider's) are withdrawn: a running one is
failed, a completed one expires at once, so the API's sweep deletes its files and this process
deletes those it can reach. A row of `patient_erasures` says what was erased, by whom and when;
it keeps the patient's random id, which names nobody once the row is gone, and never the keyed
hash of their identifier.

A second run finds the record and says nothing is left (and deletes anything that raced in).
What is kept on purpose is in docs/reliability-privacy.md: the trail of earlier reads
(`fhir_audit_events`, who read which patient id when) and the published evaluations.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from uuid import UUID

from psycopg.pq import TransactionStatus

from ehealthlab.errors import InvalidInputError, NotFoundError
from ehealthlab.store.db import Connection

_ERASED_EXPORT = "withdrawn: a patient it may include was erased (GDPR art. 17); export again"

#: the patient's own rows, deleted after the readings, in an order the foreign keys allow
_OWN_ROWS = (
    (
        "rejected_readings",
        "DELETE FROM rejected_readings r USING enrolments e WHERE e.patient_id = %(p)s"
        " AND r.device_id = e.device_id"
        " AND ehl_pilot_day(coalesce(r.measured_at, r.received_at)) >= e.start_date"
        " AND (e.end_date IS NULL"
        "      OR ehl_pilot_day(coalesce(r.measured_at, r.received_at)) <= e.end_date)",
    ),
    (
        "duplicate_readings",
        "DELETE FROM duplicate_readings r USING enrolments e WHERE e.patient_id = %(p)s"
        " AND r.device_id = e.device_id AND ehl_pilot_day(r.measured_at) >= e.start_date"
        " AND (e.end_date IS NULL OR ehl_pilot_day(r.measured_at) <= e.end_date)",
    ),
    ("alerts", "DELETE FROM alerts WHERE patient_id = %(p)s"),
    ("readings_patient_daily", "DELETE FROM readings_patient_daily WHERE patient_id = %(p)s"),
    ("sus_responses", "DELETE FROM sus_responses WHERE patient_id = %(p)s"),
    ("enrolments", "DELETE FROM enrolments WHERE patient_id = %(p)s"),
    ("patients", "DELETE FROM patients WHERE id = %(p)s"),
)


@dataclass
class ErasureReport:
    """What an erasure deleted; `erased_before` when a previous run had erased the patient."""

    patient_id: UUID
    erased_at: datetime
    counts: dict[str, int] = field(default_factory=dict)
    erased_before: bool = False
    #: export jobs withdrawn, and their directories this process deleted
    exports_withdrawn: list[UUID] = field(default_factory=list)
    export_directories_deleted: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line for the operator (no identifier but the patient's random id)."""
        if self.erased_before and not self.total:
            return (
                f"patient {self.patient_id} was erased at {self.erased_at.isoformat()}:"
                " nothing of theirs is left"
            )
        counts = ", ".join(f"{table} {n}" for table, n in self.counts.items() if n) or "nothing"
        line = f"erased patient {self.patient_id}: {counts}"
        if self.exports_withdrawn:
            line += f"; bulk exports withdrawn: {len(self.exports_withdrawn)}"
        return line


def find_patient(conn: Connection, organisation_id: UUID, identifier_hash: bytes) -> UUID:
    """The id of the provider's patient with this pseudonym (gateway/pseudonyms.py)."""
    row = conn.execute(
        "SELECT id FROM patients WHERE organisation_id = %s AND identifier_hash = %s",
        (organisation_id, identifier_hash),
    ).fetchone()
    if row is None:
        raise NotFoundError("the provider has no patient with that identifier")
    return UUID(str(row[0]))


def erase_patient(
    conn: Connection,
    patient_id: UUID,
    *,
    erased_by: str,
    reason: str = "",
    exports_dir: Path | None = None,
    refresh: bool = True,
) -> ErasureReport:
    """Erase the patient (module docstring) in one transaction of its own, then refresh
    TimescaleDB's readings_hourly outside it (unless not `refresh`: the aggregate's policy
    does it within 30 minutes); `conn` must not be inside a transaction."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise InvalidInputError("an erasure is a transaction of its own: the connection is in one")
    with conn.transaction():
        # a patient's readings in compressed chunks may exceed TimescaleDB's default limit of
        # rows decompressed by one transaction (100,000)
        conn.execute("SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0")
        found = conn.execute(
            "SELECT organisation_id FROM patients WHERE id = %s FOR UPDATE", (patient_id,)
        ).fetchone()
        before = conn.execute(
            "SELECT erased_at FROM patient_erasures WHERE patient_id = %s", (patient_id,)
        ).fetchone()
        if found is None and before is None:
            raise NotFoundError(f"no patient {patient_id}")
        readings, span = _delete_readings(conn, patient_id)
        counts = {"readings": readings}
        for table, statement in _OWN_ROWS:
            counts[table] = conn.execute(statement, {"p": patient_id}).rowcount
        withdrawn: list[UUID] = []
        if found is not None:
            organisation_id = found[0]
            withdrawn = _withdraw_exports(conn, organisation_id)
            counts["fhir_export_jobs"] = len(withdrawn)
            row = conn.execute(
                "INSERT INTO patient_erasures (patient_id, organisation_id, erased_by, counts,"
                " reason) VALUES (%s, %s, %s, %s::jsonb, %s) RETURNING erased_at",
                (patient_id, organisation_id, erased_by, json.dumps(counts), _text(reason)),
            ).fetchone()
            erased_at = row[0] if row else datetime.now().astimezone()
        else:
            erased_at = before[0] if before else datetime.now().astimezone()
    if span is not None and refresh:
        _refresh_hourly(conn)
    report = ErasureReport(
        patient_id,
        erased_at,
        {k: v for k, v in counts.items() if v or found is not None},
        erased_before=found is None,
        exports_withdrawn=withdrawn,
    )
    if exports_dir is not None:
        for job_id in withdrawn:
            directory = exports_dir / str(job_id)
            if directory.is_dir():
                shutil.rmtree(directory, ignore_errors=True)
                report.export_directories_deleted += 1
    return report


def _delete_readings(
    conn: Connection, patient_id: UUID
) -> tuple[int, tuple[datetime, datetime] | None]:
    """Delete the patient's readings and take them out of every rollup that counted them;
    returns how many, and the span of their `at` (for TimescaleDB's continuous aggregate)."""
    row = conn.execute(
        "WITH gone AS (DELETE FROM readings WHERE patient_id = %s"
        " RETURNING device_id, metric, at, measured_at, received_at)"
        " SELECT count(*), min(at), max(at), array_agg(device_id), array_agg(metric),"
        " array_agg(at), array_agg(measured_at), array_agg(received_at) FROM gone",
        (patient_id,),
    ).fetchone()
    if row is None or not row[0]:
        return 0, None
    count, first, last, devices, metrics, ats, measured, received = row
    conn.execute(
        "SELECT ehl_dashboard_rollups_subtract(%s, %s, %s, %s)", (devices, ats, measured, received)
    )
    conn.execute("SELECT ehl_readings_hourly_recompute(%s, %s, %s)", (devices, metrics, ats))
    conn.execute("SELECT ehl_device_last_readings_recompute(%s)", (sorted(set(devices)),))
    return count, (first, last)


def _withdraw_exports(conn: Connection, organisation_id: UUID) -> list[UUID]:
    """Exports that may include a patient of this provider: its own, and every provider's
    (the operator's). A queued or running one fails; a completed one expires now."""
    rows = conn.execute(
        "UPDATE fhir_export_jobs SET"
        " status = CASE WHEN status IN ('queued', 'running') THEN 'failed' ELSE status END,"
        " error = CASE WHEN status IN ('queued', 'running') THEN %s ELSE error END,"
        " finished_at = coalesce(finished_at, now()),"
        " expires_at = CASE WHEN status = 'completed' THEN now() ELSE expires_at END"
        " WHERE (provider_id = %s OR provider_id IS NULL)"
        " AND (status IN ('queued', 'running') OR (status = 'completed' AND expires_at > now()))"
        " RETURNING id",
        (_ERASED_EXPORT, organisation_id),
    ).fetchall()
    return [UUID(str(r[0])) for r in rows]


def _refresh_hourly(conn: Connection) -> None:
    """TimescaleDB: refresh the continuous aggregate now rather than at the next policy run, so
    the erased readings' hours are recomputed at once. The whole range: the refresh processes
    only the invalidated hours, and a window bounded by the erased readings' span left the last
    hour as it was (TimescaleDB 2.28, a span from a reset clock's 2001 to 2026). Invalidation
    is by time alone, so this recomputes every device's hours over the patient's span (9 s for
    60 days of 100 devices on the benchmark's machine)."""
    autocommit = conn.autocommit
    conn.autocommit = True  # a refresh runs outside any transaction block
    try:
        form = conn.execute("SELECT ehl_store_form()").fetchone()
        if form is not None and form[0] == "timescale":
            conn.execute("CALL refresh_continuous_aggregate('readings_hourly', NULL, NULL)")
    finally:
        conn.autocommit = autocommit


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL (a reason typed or posted may)."""
    return value.replace("\x00", "\ufffd")
