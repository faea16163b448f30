"""Retention: data past the configured period deleted, in bounded batches, rollups kept right.

The period is whole pilot days (Europe/Rome): a run at `now` keeps today and the `days` days
before it, and deletes what belongs to an earlier day — readings by their clock-corrected
measurement time, alerts and the patients' daily rollup by their pilot day, everything logged
on arrival (rejects, duplicates, message log, presence events) by its receive time, the FHIR
audit trail by when it was recorded. Aligning the cutoff on a pilot day's midnight makes a
patient-day of `readings_patient_daily` either wholly kept or wholly past, so it is deleted,
never recomputed.

What is kept on purpose (docs/reliability-privacy.md): the start-ups' hourly rollups without
device or patient (`readings_fleet_hourly`, `readings_municipality_hourly`, `messages_hourly`),
the published evaluations, and the records of retention runs and erasures. The rollups that
name a device or a patient follow the readings: `readings_patient_daily` loses the past days,
`device_last_readings` is set again from what remains, and `readings_hourly` is recomputed
for the hours touched (plain form) or refreshed over them (TimescaleDB, after the commit).

On TimescaleDB a chunk wholly before the cutoff whose readings are all measured before it is
dropped whole (`drop_chunks`, which fires no trigger: nothing above depends on one); the rest
is deleted device by device through `readings_device_measured_idx`, a batch of devices per
transaction, so a run never holds more than one batch's locks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg import sql

from ehealthlab.errors import InvalidInputError
from ehealthlab.store.db import Connection

ROME = ZoneInfo("Europe/Rome")
#: devices whose past readings one transaction deletes
DEVICE_BATCH = 50
#: rows of a log table one transaction deletes
ROW_BATCH = 5_000

#: TimescaleDB refuses a DML transaction that decompresses more than 100,000 rows by default;
#: a batch of devices' past readings in compressed chunks may (a no-op on the plain form)
_UNLIMITED_DECOMPRESSION = "SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0"
#: log tables keyed by an increasing bigint id, deleted by their receive time
_BY_RECEIVE_TIME = (
    "rejected_readings",
    "duplicate_readings",
    "device_messages",
    "device_status_events",
)


#: tables deleted by a pilot day or a time of their own, a batch per statement
_BY_DAY = (
    (
        "readings_patient_daily",
        "DELETE FROM readings_patient_daily WHERE (organisation_id, day, patient_id) IN"
        " (SELECT organisation_id, day, patient_id FROM readings_patient_daily"
        " WHERE day < %(day)s LIMIT %(n)s)",
    ),
    (
        "alerts",
        "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE day < %(day)s LIMIT %(n)s)",
    ),
    (
        "fhir_audit_events",
        "DELETE FROM fhir_audit_events WHERE id IN (SELECT id FROM fhir_audit_events"
        " WHERE recorded < %(cutoff)s ORDER BY recorded LIMIT %(n)s)",
    ),
    (
        "fhir_export_jobs",
        "DELETE FROM fhir_export_jobs WHERE id IN (SELECT id FROM fhir_export_jobs"
        " WHERE created_at < %(cutoff)s AND status NOT IN ('queued', 'running') LIMIT %(n)s)",
    ),
)


def retention_cutoff(now: datetime, days: int) -> datetime:
    """The first moment kept: midnight, Europe/Rome, of the day `days` days before `now`'s."""
    if now.tzinfo is None:
        raise InvalidInputError("the retention clock needs a time zone")
    if days < 1:
        raise InvalidInputError(f"the retention period must be at least one day, not {days}")
    first_kept = now.astimezone(ROME).date() - timedelta(days=days)
    return datetime.combine(first_kept, time(0), tzinfo=ROME).astimezone(UTC)


def first_kept_day(cutoff: datetime) -> date:
    """The pilot day that starts at the cutoff."""
    return cutoff.astimezone(ROME).date()


@dataclass
class RetentionReport:
    """What a run deleted, table by table (readings counted whether dropped or deleted)."""

    now: datetime
    days: int
    cutoff: datetime
    deleted: dict[str, int] = field(default_factory=dict)
    #: TimescaleDB chunks dropped whole
    chunks_dropped: int = 0

    def add(self, table: str, rows: int) -> None:
        self.deleted[table] = self.deleted.get(table, 0) + rows

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def run_retention(
    conn: Connection,
    *,
    now: datetime,
    days: int,
    run_by: str,
    device_batch: int = DEVICE_BATCH,
    row_batch: int = ROW_BATCH,
) -> RetentionReport:
    """Delete what is past the period at `now`; `conn` must be in autocommit (each batch
    commits on its own, and TimescaleDB's refresh runs outside any transaction)."""
    if not conn.autocommit:
        raise InvalidInputError(
            "retention commits batch by batch: give it an autocommit connection"
        )
    cutoff = retention_cutoff(now, days)
    report = RetentionReport(now=now, days=days, cutoff=cutoff)
    form = conn.execute("SELECT ehl_store_form()").fetchone()
    timescale = form is not None and form[0] == "timescale"
    if timescale:
        _drop_whole_chunks(conn, cutoff, report)
    touched = _delete_readings(conn, cutoff, report, device_batch)
    with conn.transaction():
        last = conn.execute(
            "SELECT coalesce(array_agg(device_id), '{}') FROM device_last_readings"
            " WHERE measured_at < %s",
            (cutoff,),
        ).fetchone()
        conn.execute("SELECT ehl_device_last_readings_recompute(%s)", (last[0] if last else [],))
    if timescale and (touched is not None or report.chunks_dropped):
        # the hours of dropped chunks and deleted readings: the refresh finds their raw data
        # gone and deletes them from the continuous aggregate (a drop_chunks invalidates
        # nothing, so the window reaches back to the start: NULL)
        conn.execute("CALL refresh_continuous_aggregate('readings_hourly', NULL, NULL)")
    day = first_kept_day(cutoff)
    by_day = {"day": day, "cutoff": cutoff, "n": row_batch}
    for table, statement in _BY_DAY:
        _delete_in_batches(conn, report, table, statement, by_day)
    for table in _BY_RECEIVE_TIME:
        _delete_by_id(conn, report, table, cutoff, n=row_batch)
    conn.execute(
        "INSERT INTO retention_runs (run_now, days, cutoff, deleted, run_by, finished_at)"
        " VALUES (%s, %s, %s, %s::jsonb, %s, clock_timestamp())",
        (now, days, cutoff, _json(report.deleted), run_by),
    )
    return report


def _json(counts: dict[str, int]) -> str:
    return json.dumps(counts, sort_keys=True)


def _drop_whole_chunks(conn: Connection, cutoff: datetime, report: RetentionReport) -> None:
    """Drop each chunk of `readings` that ends by the cutoff and holds no reading measured
    after it (a device whose clock was reset sends `at` in the past, corrected on arrival)."""
    chunks = conn.execute(
        "SELECT chunk_schema, chunk_name, range_start, range_end"
        " FROM timescaledb_information.chunks"
        " WHERE hypertable_schema = current_schema() AND hypertable_name = 'readings'"
        " AND range_end <= %s ORDER BY range_start",
        (cutoff,),
    ).fetchall()
    for schema, name, start, end in chunks:
        with conn.transaction():
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), count(*) FILTER (WHERE measured_at >= %s) FROM {}"
                ).format(sql.Identifier(schema, name)),
                (cutoff,),
            ).fetchone()
            total, kept = row if row else (0, 0)
            if kept:
                continue  # its readings measured later stay; the device pass deletes the rest
            conn.execute(
                "SELECT drop_chunks('readings', older_than => %s::timestamptz,"
                " newer_than => %s::timestamptz)",
                (end, start),
            )
        report.add("readings", total)
        report.chunks_dropped += 1


def _delete_readings(
    conn: Connection, cutoff: datetime, report: RetentionReport, device_batch: int
) -> datetime | None:
    """Delete the readings measured before the cutoff, a batch of devices at a time, with the
    hourly rollup's touched hours recomputed in the same transaction. Returns the latest `at`
    deleted (TimescaleDB refreshes its continuous aggregate up to there)."""
    # every device that may have readings: the registered ones, and any with a newest reading
    devices = [
        row[0]
        for row in conn.execute(
            "SELECT device_id FROM devices UNION SELECT device_id FROM device_last_readings"
            " ORDER BY 1"
        )
    ]
    latest: datetime | None = None
    for batch in _chunks(devices, device_batch):
        with conn.transaction():
            # the hours touched go to a temporary table in the deleting statement; the
            # recomputation is a second one (a statement's own deletion is invisible to the
            # functions it calls)
            conn.execute("SELECT ehl_hours_touched_create()")
            conn.execute(_UNLIMITED_DECOMPRESSION)
            row = conn.execute(
                "WITH gone AS (DELETE FROM readings WHERE device_id = ANY(%s)"
                " AND measured_at < %s RETURNING device_id, metric, at),"
                " touched AS (INSERT INTO ehl_hours_touched SELECT DISTINCT device_id, metric,"
                " date_bin('1 hour', at, timestamptz '2000-01-01') FROM gone)"
                " SELECT count(*), max(at) FROM gone",
                (batch, cutoff),
            ).fetchone()
            if row and row[0]:
                conn.execute("SELECT ehl_readings_hourly_recompute_touched()")
        if row and row[0]:
            report.add("readings", row[0])
            latest = row[1] if latest is None else max(latest, row[1])
    return latest


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _delete_by_id(
    conn: Connection, report: RetentionReport, table: str, cutoff: datetime, *, n: int
) -> None:
    """Walk an identity-keyed log table in id order (ids grow with time): each batch is one
    index range scan from where the last one stopped, not a scan past the dead rows."""
    after = 0
    statement = sql.SQL(
        "WITH gone AS (DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
        " WHERE id > %s AND received_at < %s ORDER BY id LIMIT %s) RETURNING id)"
        " SELECT count(*), max(id) FROM gone"
    ).format(table=sql.Identifier(table))
    while True:
        with conn.transaction():
            row = conn.execute(statement, (after, cutoff, n)).fetchone()
        count, last = row if row else (0, None)
        if count:
            report.add(table, count)
        if count < n or last is None:
            return
        after = last


def _delete_in_batches(
    conn: Connection, report: RetentionReport, table: str, statement: str, params: dict[str, Any]
) -> None:
    """Run a DELETE limited to %(n)s rows until it deletes fewer."""
    n = params["n"]
    while True:
        with conn.transaction():
            count = conn.execute(statement, params).rowcount
        if count > 0:
            report.add(table, count)
        if count < n:
            return
