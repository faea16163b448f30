"""Writing readings into the store, once each, with patient attribution.

A batch goes in one transaction: binary COPY into a session-temporary staging table, then one
INSERT ... ON CONFLICT DO NOTHING into `readings` keyed on (device, metric, `at`). What the
insert skipped is classified against the stored row: the same value is a *duplicate*
(counted in `duplicate_readings`, not an error), another value a *conflict* (the first value
stays; the caller rejects the newcomer as `conflicting_duplicate`). The hourly rollup follows
in the same transaction (a trigger on the plain form, a continuous aggregate on TimescaleDB),
and so do the dashboards' rollups (statement triggers on both forms, migration 0022).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from psycopg.pq import TransactionStatus

from ehealthlab.records import record
from ehealthlab.store.db import Connection

# The patient is the one whose enrolment with the device covers the reading's pilot day
# (its clock-corrected time, in Europe/Rome); none yet means unassigned, not dropped. The batch
# is sorted in byte order (COLLATE "C"): the same rows compare equal in any deterministic
# collation, and a locale's order (C.UTF-8 included) compares through strcoll without
# abbreviated keys: the sort of a batch of 10,000 took 26-65 ms that way against 13-41 ms
# (one loaded machine, four batches each).
#
# Then it sends back the attributed readings in the alert rules' scope (see AlertScope), how
# many it inserted and, only when it skipped some of the batch, the keys it inserted (to
# classify the others). Loading every stored row back into Python cost about
# 4 µs of a worker's CPU a reading (10,000 rows of seven columns: 40 ms a batch); in scope
# are only readings at or past a rule's threshold, and weights.
_INSERT_AND_REPORT = """
    WITH inserted AS (
        INSERT INTO readings (device_id, metric, at, value, measured_at, received_at, seq, msg_id,
                              clock_offset_s, clock_corrected, reported_unit, patient_id)
        SELECT DISTINCT ON (s.device_id COLLATE "C", s.metric COLLATE "C", s.at)
               s.device_id, s.metric, s.at, s.value, s.measured_at, s.received_at, s.seq, s.msg_id,
               s.clock_offset_s, s.clock_corrected, s.reported_unit, e.patient_id
        FROM staging_readings s
        -- at most one enrolment matches: they may not overlap for a device (exclusion constraint)
        LEFT JOIN enrolments e
          ON e.device_id = s.device_id
         AND ehl_pilot_day(s.measured_at) >= e.start_date
         AND (e.end_date IS NULL OR ehl_pilot_day(s.measured_at) <= e.end_date)
        ORDER BY s.device_id COLLATE "C", s.metric COLLATE "C", s.at, s.ord
        ON CONFLICT DO NOTHING
        RETURNING device_id, metric, at, value, measured_at, received_at, patient_id
    )
    SELECT 'scope', i.device_id, i.metric, i.at, i.value, i.measured_at, i.received_at,
           i.patient_id, NULL::bigint
    FROM inserted i
    LEFT JOIN unnest(%(metrics)b::text[], %(at_least)b::float8[], %(at_most)b::float8[])
           AS b(metric, at_least, at_most) ON b.metric = i.metric
    WHERE i.patient_id IS NOT NULL AND (
        %(everything)s OR i.metric = ANY(%(every)b::text[])
        OR i.value >= b.at_least OR i.value <= b.at_most)
    UNION ALL
    SELECT 'key', device_id, metric, at, NULL, NULL, NULL, NULL, NULL
    FROM inserted
    WHERE (SELECT count(*) FROM inserted) < %(batch)s
    UNION ALL
    SELECT 'count', NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(*) FROM inserted
"""

_STAGING_DDL = """
    CREATE TEMPORARY TABLE IF NOT EXISTS staging_readings (
        ord integer NOT NULL,
        device_id text NOT NULL,
        metric text NOT NULL,
        at timestamptz NOT NULL,
        value double precision NOT NULL,
        measured_at timestamptz NOT NULL,
        received_at timestamptz NOT NULL,
        seq bigint NOT NULL,
        msg_id text NOT NULL,
        clock_offset_s real NOT NULL,
        clock_corrected boolean NOT NULL,
        reported_unit text
    ) ON COMMIT DELETE ROWS
"""
_STAGING_COLUMNS = (
    "ord, device_id, metric, at, value, measured_at, received_at, seq, msg_id,"
    " clock_offset_s, clock_corrected, reported_unit"
)
_COPY_STAGING = "COPY staging_readings (" + _STAGING_COLUMNS + ") FROM STDIN (FORMAT BINARY)"
_STAGING_TYPES = (
    "int4", "text", "text", "timestamptz", "float8", "timestamptz", "timestamptz", "int8",
    "text", "float4", "bool", "text",
)  # fmt: skip


@record
class ReadingRow:
    """One validated reading, value in the metric's canonical unit, ready to store."""

    device_id: str
    metric: str
    at: datetime
    value: float
    measured_at: datetime
    received_at: datetime
    seq: int
    msg_id: str
    clock_offset_s: float
    clock_corrected: bool
    reported_unit: str | None = None

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.device_id, self.metric, self.at)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A reading whose key was stored with another value: the stored value stays."""

    index: int
    reading: ReadingRow
    stored_value: float
    stored_seq: int


@dataclass(frozen=True, slots=True)
class AttributedRow:
    """A reading just stored with a patient: what the alert rules look at."""

    patient_id: UUID
    device_id: str
    metric: str
    at: datetime
    value: float
    measured_at: datetime
    received_at: datetime


@dataclass(frozen=True)
class AlertScope:
    """Which newly stored readings the alert rules may act on: a batch sends back only those
    of a patient whose metric is in `every` (the weight rule compares every weight with the
    others) or whose value is at least `at_least[metric]` or at most `at_most[metric]`. The
    rules then decide on them; a scope only has to cover what they could raise."""

    at_least: Mapping[str, float] = field(default_factory=dict)
    at_most: Mapping[str, float] = field(default_factory=dict)
    every: frozenset[str] = frozenset()
    #: every attributed reading (an enrolment attributing earlier readings, the tests)
    everything: bool = False

    def covers(self, metric: str, value: float) -> bool:
        """Whether a patient's reading is in scope: what the batch's SQL decides, in Python."""
        if self.everything or metric in self.every:
            return True
        least, most = self.at_least.get(metric), self.at_most.get(metric)
        return (least is not None and value >= least) or (most is not None and value <= most)

    def parameters(self) -> dict[str, object]:
        metrics = sorted(set(self.at_least) | set(self.at_most))
        return {
            "everything": self.everything,
            "every": sorted(self.every),
            "metrics": metrics,
            "at_least": [_float_or_none(self.at_least.get(m)) for m in metrics],
            "at_most": [_float_or_none(self.at_most.get(m)) for m in metrics],
        }


def _float_or_none(value: float | None) -> float | None:
    """A bound as the array's type: psycopg refuses a list of ints and floats mixed."""
    return None if value is None else float(value)


#: the scope of `ReadingWriter.write` unless told: every attributed reading
EVERY_ATTRIBUTED = AlertScope(everything=True)


@dataclass
class WriteResult:
    inserted: int = 0
    duplicates: list[int] = field(default_factory=list)  # indexes into the batch
    conflicts: list[Conflict] = field(default_factory=list)
    #: the attributed readings just stored, of the scope the batch was written with
    attributed: list[AttributedRow] = field(default_factory=list)


class ReadingWriter:
    """Writes batches of readings over one connection (one per ingest worker)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._known_months: set[tuple[int, int]] = set()
        self._staging_ready = False
        #: rows may be left in the staging table: copied in a transaction not known to be over
        self._staged = False

    def write(
        self, batch: Sequence[ReadingRow], scope: AlertScope = EVERY_ATTRIBUTED
    ) -> WriteResult:
        """Store a batch in a transaction of its own; duplicates collapse, conflicts are
        reported."""
        self.prepare(batch)
        with self._conn.transaction():
            return self.write_in_transaction(batch, scope)

    def prepare(self, batch: Sequence[ReadingRow]) -> None:
        """What must exist before a batch's transaction: the staging table of this session
        and the partitions of months not seen yet (DDL in short transactions of its own, so
        the batch never holds a lock on it)."""
        if self._conn.info.transaction_status == TransactionStatus.IDLE:
            self._staged = False  # committed (emptied: ON COMMIT DELETE ROWS) or rolled back
        if not self._staging_ready:
            with self._conn.transaction():
                self._conn.execute(_STAGING_DDL)
            self._staging_ready = True
        self._ensure_partitions(batch)

    def write_in_transaction(
        self, batch: Sequence[ReadingRow], scope: AlertScope = EVERY_ATTRIBUTED
    ) -> WriteResult:
        """Store a batch inside the caller's transaction (after `prepare(batch)`), so that
        readings, rejections and the message log commit or roll back together; the result's
        `attributed` holds the readings of `scope`."""
        if not batch:
            return WriteResult()
        with self._conn.cursor() as cur:
            if self._staged:  # an earlier batch of this transaction: its rows are still there
                # not TRUNCATE, which gives the table a new file and so invalidates the plans
                # that read it: 2-3 ms more a batch (measured)
                cur.execute("DELETE FROM staging_readings")
            self._staged = True
            with cur.copy(_COPY_STAGING) as copy:
                copy.set_types(list(_STAGING_TYPES))
                for index, r in enumerate(batch):
                    copy.write_row(
                        (index, r.device_id, r.metric, r.at, r.value, r.measured_at,
                         r.received_at, r.seq, r.msg_id, r.clock_offset_s, r.clock_corrected,
                         r.reported_unit)
                    )  # fmt: skip
            cur.execute(_INSERT_AND_REPORT, {**scope.parameters(), "batch": len(batch)})
            result = WriteResult()
            inserted_keys: set[tuple[str, str, datetime]] = set()
            for kind, device, metric, at, value, measured, received, patient, count in cur:
                if kind == "scope":
                    result.attributed.append(
                        AttributedRow(patient, device, metric, at, value, measured, received)
                    )
                elif kind == "key":
                    inserted_keys.add((device, metric, at))
                else:
                    result.inserted = count
            if result.inserted < len(batch):
                self._classify_skipped(batch, inserted_keys, result)
        # the rows stay until the commit empties the table (ON COMMIT DELETE ROWS), or the
        # next batch of this transaction, if any, deletes them: no statement a batch for it
        return result

    def _classify_skipped(
        self,
        batch: Sequence[ReadingRow],
        inserted_keys: set[tuple[str, str, datetime]],
        result: WriteResult,
    ) -> None:
        first_index: dict[tuple[str, str, datetime], int] = {}
        skipped: list[int] = []
        for index, reading in enumerate(batch):
            key = reading.key
            if key in inserted_keys and key not in first_index:
                first_index[key] = index
            else:
                first_index.setdefault(key, index)
                skipped.append(index)
        conn = self._conn
        rows = conn.execute(
            "SELECT s.ord, r.value, r.seq FROM staging_readings s"
            " JOIN readings r USING (device_id, metric, at) WHERE s.ord = ANY(%b)",
            (skipped,),
        ).fetchall()
        stored = {int(ord_): (float(value), int(seq)) for ord_, value, seq in rows}
        duplicate_rows = []
        for index in skipped:
            stored_value, stored_seq = stored[index]
            reading = batch[index]
            if reading.value == stored_value:
                result.duplicates.append(index)
                duplicate_rows.append(
                    (reading.received_at, reading.device_id, reading.metric, reading.at,
                     reading.measured_at, reading.seq, reading.msg_id)
                )  # fmt: skip
            else:
                result.conflicts.append(Conflict(index, reading, stored_value, stored_seq))
        if duplicate_rows:
            with conn.cursor() as dup_cur:
                dup_cur.executemany(
                    "INSERT INTO duplicate_readings"
                    " (received_at, device_id, metric, at, measured_at, seq, msg_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    duplicate_rows,
                )

    def _ensure_partitions(self, batch: Sequence[ReadingRow]) -> None:
        """Create missing monthly partitions in a short transaction of its own."""
        new = {}
        for reading in batch:
            at = reading.at if reading.at.tzinfo is UTC else reading.at.astimezone(UTC)
            month = (at.year, at.month)
            if month not in self._known_months:
                new[month] = reading.at
        if not new:
            return
        with self._conn.transaction():
            self._conn.execute("SELECT ehl_ensure_reading_partitions(%s)", (list(new.values()),))
        self._known_months.update(new)


def attribute_unassigned(conn: Connection, enrolment_id: UUID) -> list[AttributedRow]:
    """Attribute to an enrolment's patient the unassigned readings it covers; returns them.

    Readings received before the enrolment was recorded were kept as unassigned, never
    dropped; this is the moment they find their patient (and the alert rules see them).
    """
    rows = conn.execute(
        "UPDATE readings r SET patient_id = e.patient_id FROM enrolments e"
        " WHERE e.id = %s AND r.device_id = e.device_id AND r.patient_id IS NULL"
        " AND ehl_pilot_day(r.measured_at) >= e.start_date"
        " AND (e.end_date IS NULL OR ehl_pilot_day(r.measured_at) <= e.end_date)"
        " RETURNING r.patient_id, r.device_id, r.metric, r.at, r.value, r.measured_at,"
        " r.received_at",
        (enrolment_id,),
    ).fetchall()
    return [AttributedRow(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class LatestReading:
    """One of a device's newest stored readings (what the portal shows a start-up)."""

    device_id: str
    metric: str
    value: float
    measured_at: datetime
    received_at: datetime
    clock_corrected: bool
    attributed: bool  # to a patient, i.e. an enrolment covers it


def latest_readings(
    conn: Connection, device_ids: Sequence[str], per_device: int
) -> dict[str, list[LatestReading]]:
    """Each device's `per_device` newest readings by measurement time, newest first.

    One index probe per device and partition (device_id, measured_at), so a start-up's whole
    fleet costs one query however long its history.
    """
    rows = conn.execute(
        "SELECT r.device_id, r.metric, r.value, r.measured_at, r.received_at,"
        " r.clock_corrected, r.patient_id IS NOT NULL"
        " FROM unnest(%b::text[]) AS d(device_id) CROSS JOIN LATERAL ("
        "   SELECT * FROM readings WHERE device_id = d.device_id"
        "   ORDER BY measured_at DESC LIMIT %s) AS r"
        " ORDER BY r.device_id, r.measured_at DESC, r.metric",
        (list(device_ids), per_device),
    ).fetchall()
    found: dict[str, list[LatestReading]] = {}
    for row in rows:
        found.setdefault(row[0], []).append(LatestReading(*row))
    return found
