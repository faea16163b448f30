"""The store side of `$export`: the jobs table, and each resource type's rows streamed
through a server-side cursor, so an export of millions of readings holds one batch at a time.

Jobs are claimed, kept alive and finished with conditional UPDATEs naming the worker, so two
API processes never run one job, and a process that died is noticed by its silence
(`heartbeat_at`). The row queries take an `ExportScope` and build their WHERE clause from it
with psycopg's `sql` module (never by pasting values).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ehealthlab.fhir.bulk.export import ExportFile, ExportLevel, ExportRequest, JobStatus
from ehealthlab.store.db import Connection

#: a statement psycopg can run: plain or composed SQL
Query = sql.SQL | sql.Composed
#: rows fetched from the server-side cursor at a time: the memory an export holds
BATCH_ROWS = 5000


@dataclass(frozen=True, slots=True)
class ExportScope:
    """Whose data an export reads."""

    #: only this provider's patients (None: every provider's, or everything)
    provider_id: UUID | None
    #: only patients' data (group and patient levels); False: everything, unassigned
    #: readings included (system level)
    patients_only: bool


@dataclass(frozen=True, slots=True)
class ExportJob:
    """A row of fhir_export_jobs."""

    id: UUID
    organisation_id: UUID
    level: ExportLevel
    provider_id: UUID | None
    types: list[str]
    since: datetime | None
    request_url: str
    ignored: list[str]
    status: JobStatus
    created_at: datetime
    worker: str | None
    heartbeat_at: datetime | None
    attempts: int
    transaction_time: datetime | None
    written: int
    files: list[dict[str, Any]]
    error: str | None
    expires_at: datetime | None

    @property
    def scope(self) -> ExportScope:
        return ExportScope(self.provider_id, patients_only=self.level != "system")

    @property
    def export_files(self) -> list[ExportFile]:
        return [ExportFile.from_json(item) for item in self.files]


_JOB_COLUMNS = sql.SQL(", ").join(
    sql.Identifier(name)
    for name in (
        "id", "organisation_id", "level", "provider_id", "types", "since", "request_url",
        "ignored", "status", "created_at", "worker", "heartbeat_at", "attempts",
        "transaction_time", "written", "files", "error", "expires_at",
    )
)  # fmt: skip


def _one_job(conn: Connection, query: Query, params: dict[str, Any]) -> ExportJob | None:
    with conn.cursor(row_factory=class_row(ExportJob)) as cur:
        cur.execute(query, params)
        return cur.fetchone()


def create_job(
    conn: Connection,
    organisation_id: UUID,
    request: ExportRequest,
    provider_id: UUID | None,
    request_url: str,
) -> ExportJob:
    """A queued job for this kick-off."""
    job = _one_job(
        conn,
        sql.SQL(
            "INSERT INTO fhir_export_jobs (organisation_id, level, provider_id, types, since,"
            " request_url, ignored) VALUES (%(org)s, %(level)s, %(provider)s, %(types)s,"
            " %(since)s, %(url)s, %(ignored)s) RETURNING {}"
        ).format(_JOB_COLUMNS),
        {
            "org": organisation_id,
            "level": request.level,
            "provider": provider_id,
            "types": list(request.types),
            "since": request.since,
            "url": request_url,
            "ignored": list(request.ignored),
        },
    )
    if job is None:  # INSERT ... RETURNING always returns the row
        raise RuntimeError("the database returned no job")
    return job


def get_job(
    conn: Connection, job_id: UUID, organisation_id: UUID | None = None
) -> ExportJob | None:
    """The job (of this organisation, when given)."""
    return _one_job(
        conn,
        sql.SQL(
            "SELECT {} FROM fhir_export_jobs WHERE id = %(id)s"
            " AND (%(org)s::uuid IS NULL OR organisation_id = %(org)s::uuid)"
        ).format(_JOB_COLUMNS),
        {"id": job_id, "org": organisation_id},
    )


def active_jobs(conn: Connection, organisation_id: UUID) -> int:
    """How many of the organisation's exports are queued or running."""
    row = conn.execute(
        "SELECT count(*) FROM fhir_export_jobs WHERE organisation_id = %s"
        " AND status IN ('queued', 'running')",
        (organisation_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def claim_job(
    conn: Connection, job_id: UUID, worker: str, *, stale_after: timedelta, max_attempts: int
) -> ExportJob | None:
    """Take the job for `worker` if it is queued, or running in a process silent for longer
    than `stale_after`; None when it is someone else's, finished or cancelled."""
    return _one_job(
        conn,
        sql.SQL(
            "UPDATE fhir_export_jobs SET status = 'running', worker = %(worker)s,"
            " heartbeat_at = now(), started_at = now(), attempts = attempts + 1, written = 0,"
            " files = '[]'::jsonb, error = NULL"
            " WHERE id = %(id)s AND attempts < %(max)s AND (status = 'queued'"
            " OR (status = 'running' AND heartbeat_at < now() - %(stale)s))"
            " RETURNING {}"
        ).format(_JOB_COLUMNS),
        {"id": job_id, "worker": worker, "stale": stale_after, "max": max_attempts},
    )


def heartbeat(conn: Connection, job_id: UUID, worker: str, written: int) -> bool:
    """Record progress; False when the job is no longer this worker's to run (cancelled,
    or taken over after this process fell silent)."""
    row = conn.execute(
        "UPDATE fhir_export_jobs SET heartbeat_at = now(), written = %s"
        " WHERE id = %s AND worker = %s AND status = 'running' RETURNING id",
        (written, job_id, worker),
    ).fetchone()
    return row is not None


def complete_job(
    conn: Connection,
    job_id: UUID,
    worker: str,
    *,
    transaction_time: datetime,
    files: Sequence[ExportFile],
    lifetime: timedelta,
) -> bool:
    """Mark the job complete with its files; False when it was cancelled meanwhile."""
    row = conn.execute(
        "UPDATE fhir_export_jobs SET status = 'completed', finished_at = now(),"
        " heartbeat_at = now(), transaction_time = %s, files = %s, expires_at = now() + %s,"
        " written = %s WHERE id = %s AND worker = %s AND status = 'running' RETURNING id",
        (
            transaction_time,
            Jsonb([item.as_json() for item in files]),
            lifetime,
            sum(item.count for item in files if item.type != "OperationOutcome"),
            job_id,
            worker,
        ),
    ).fetchone()
    return row is not None


def release_job(conn: Connection, job_id: UUID, worker: str) -> None:
    """Give a running job back to the queue (this process is stopping): another process,
    or this one when it starts again, runs it from the beginning."""
    conn.execute(
        "UPDATE fhir_export_jobs SET status = 'queued', worker = NULL, written = 0"
        " WHERE id = %s AND worker = %s AND status = 'running'",
        (job_id, worker),
    )


def fail_job(conn: Connection, job_id: UUID, worker: str | None, error: str) -> None:
    """Mark the job failed (of this worker's, when given)."""
    conn.execute(
        "UPDATE fhir_export_jobs SET status = 'failed', finished_at = now(), error = %s"
        " WHERE id = %s AND (%s::text IS NULL OR worker = %s::text)"
        " AND status IN ('queued', 'running')",
        (error, job_id, worker, worker),
    )


def cancel_job(conn: Connection, job_id: UUID, organisation_id: UUID) -> bool:
    """Cancel the organisation's job, running or finished (the client is done with it);
    False when there is none to cancel."""
    row = conn.execute(
        "UPDATE fhir_export_jobs SET status = 'cancelled', finished_at = now()"
        " WHERE id = %s AND organisation_id = %s AND status <> 'cancelled' RETURNING id",
        (job_id, organisation_id),
    ).fetchone()
    return row is not None


def jobs_to_resume(conn: Connection, *, stale_after: timedelta, max_attempts: int) -> list[UUID]:
    """Jobs nobody runs: queued, or running in a process silent for longer than
    `stale_after`. Those that used up their attempts are failed instead."""
    conn.execute(
        "UPDATE fhir_export_jobs SET status = 'failed', finished_at = now(),"
        " error = 'the export was interrupted ' || attempts || ' times'"
        " WHERE status = 'running' AND heartbeat_at < now() - %s AND attempts >= %s",
        (stale_after, max_attempts),
    )
    rows = conn.execute(
        "SELECT id FROM fhir_export_jobs WHERE status = 'queued'"
        " OR (status = 'running' AND heartbeat_at < now() - %s) ORDER BY created_at",
        (stale_after,),
    ).fetchall()
    return [row[0] for row in rows]


def expired_jobs(conn: Connection) -> list[UUID]:
    """Jobs whose files may be deleted: expired, cancelled or failed."""
    rows = conn.execute(
        "SELECT id FROM fhir_export_jobs WHERE status IN ('cancelled', 'failed')"
        " OR (status = 'completed' AND expires_at < now())"
    ).fetchall()
    return [row[0] for row in rows]


def provider_exists(conn: Connection, organisation_id: UUID) -> bool:
    """Whether a Group of this id exists: the id of a health provider organisation."""
    row = conn.execute(
        "SELECT 1 FROM organisations WHERE id = %s AND kind = 'provider'", (organisation_id,)
    ).fetchone()
    return row is not None


# -- rows of each resource type -------------------------------------------------------------

#: rows as rows.ReadingRecord, sorted so that a blood-pressure panel's readings are adjacent
_OBSERVATIONS = sql.SQL(
    "SELECT r.device_id, d.device_type, r.metric, r.at, r.value, r.measured_at,"
    " r.received_at, r.clock_corrected, r.patient_id, p.organisation_id"
    " FROM readings r JOIN devices d ON d.device_id = r.device_id"
    " {join} patients p ON p.id = r.patient_id {where} ORDER BY r.device_id, r.at"
)
#: a reading changes when it is stored, and when an enrolment recorded later attributes it
_OBSERVATION_SINCE = sql.SQL(
    "(r.received_at > %(since)s OR EXISTS (SELECT 1 FROM enrolments e"
    " WHERE e.device_id = r.device_id AND e.patient_id = r.patient_id"
    " AND e.created_at > %(since)s AND ehl_pilot_day(r.measured_at) >= e.start_date"
    " AND (e.end_date IS NULL OR ehl_pilot_day(r.measured_at) <= e.end_date)))"
)
_PATIENTS = sql.SQL(
    "SELECT id, organisation_id, identifier_hash FROM patients p {where} ORDER BY id"
)
_DEVICES = sql.SQL(
    "SELECT device_id, organisation_id, device_type, model, serial, firmware, revoked_at"
    " FROM devices d {where} ORDER BY device_id"
)
#: a device enrolled with one of the scope's patients
_ENROLLED_DEVICE = sql.SQL(
    "EXISTS (SELECT 1 FROM enrolments e JOIN patients p ON p.id = e.patient_id"
    " WHERE e.device_id = d.device_id {provider})"
)
_ORGANISATIONS = sql.SQL("SELECT id, kind, name FROM organisations o {where} ORDER BY id")
_LOCATIONS = sql.SQL(
    "SELECT istat_code, name, latitude, longitude, snai_class, snai_class_label"
    " FROM municipalities ORDER BY istat_code"
)


def _where(conditions: Sequence[Query]) -> Query:
    if not conditions:
        return sql.SQL("")
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions)


def _provider_filter(scope: ExportScope, column: str) -> list[Query]:
    if scope.provider_id is None:
        return []
    return [sql.SQL("{} = %(provider)s").format(sql.SQL(column))]


def observation_query(scope: ExportScope, since: datetime | None) -> Query:
    conditions = _provider_filter(scope, "p.organisation_id")
    if since is not None:
        conditions.append(_OBSERVATION_SINCE)
    join = sql.SQL("JOIN" if scope.patients_only else "LEFT JOIN")
    return _OBSERVATIONS.format(join=join, where=_where(conditions))


def patient_query(scope: ExportScope, since: datetime | None) -> Query:
    conditions = _provider_filter(scope, "p.organisation_id")
    if since is not None:
        conditions.append(sql.SQL("p.created_at > %(since)s"))
    return _PATIENTS.format(where=_where(conditions))


def _enrolled_device(scope: ExportScope) -> Query:
    provider = _provider_filter(scope, "p.organisation_id")
    return _ENROLLED_DEVICE.format(
        provider=sql.SQL(" AND ") + provider[0] if provider else sql.SQL("")
    )


def device_query(scope: ExportScope, since: datetime | None) -> Query:
    conditions: list[Query] = []
    if scope.patients_only:
        conditions.append(_enrolled_device(scope))
    if since is not None:
        conditions.append(sql.SQL("(d.created_at > %(since)s OR d.revoked_at > %(since)s)"))
    return _DEVICES.format(where=_where(conditions))


def organisation_query(scope: ExportScope, since: datetime | None) -> Query:
    conditions: list[Query] = []
    if scope.patients_only:
        # the provider(s), and the start-ups owning their patients' devices
        provider = sql.SQL("o.kind = 'provider'")
        if scope.provider_id is not None:
            provider = sql.SQL("o.id = %(provider)s")
        owner = sql.SQL(
            "EXISTS (SELECT 1 FROM devices d WHERE d.organisation_id = o.id AND {})"
        ).format(_enrolled_device(scope))
        conditions.append(sql.SQL("({} OR {})").format(provider, owner))
    if since is not None:
        conditions.append(sql.SQL("o.created_at > %(since)s"))
    return _ORGANISATIONS.format(where=_where(conditions))


def location_query(scope: ExportScope, since: datetime | None) -> Query:
    """Every municipality: reference data the store keeps no change time for, which the IG
    lets a server include whatever `_since` says."""
    return _LOCATIONS


QUERIES = {
    "Observation": observation_query,
    "Patient": patient_query,
    "Device": device_query,
    "Organization": organisation_query,
    "Location": location_query,
}


def stream_rows(
    conn: Connection,
    resource_type: str,
    scope: ExportScope,
    since: datetime | None,
    *,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of one resource type in batches, read through a server-side cursor inside
    the caller's transaction (whose snapshot every type of one export shares)."""
    query = QUERIES[resource_type](scope, since)
    params = {"provider": scope.provider_id, "since": since}
    # binary: timestamps and UUIDs decode faster than from their text
    with conn.cursor(name=f"ehl_export_{uuid.uuid4().hex[:12]}", binary=True) as cursor:
        cursor.itersize = batch_rows
        cursor.execute(query, params)
        while rows := cursor.fetchmany(batch_rows):
            yield rows
