"""The audit trail of /fhir: every read or search of patient data, kept as one row and
served to the operator as FHIR R4 AuditEvents.

`record` writes one entry in the caller's transaction. Reads and searches hand theirs to an
`AuditWriter` instead: a bounded queue and one thread that writes whatever has queued up in
one transaction, so a read costs no write of its own (no INSERT, no commit waiting for the
WAL). The writer lingers up to LINGER_SECONDS for a batch to fill, so that a busy API writes
a few dozen batches a second rather than one per request, and commits durably: an entry
waits in memory for about that long, so an orderly stop, which drains the queue, loses
nothing, and a killed process at most the last fraction of a second. Nothing is dropped
silently: when the queue is full the request writes its entry itself (`submit` says so;
`overflowed` counts them), and an entry the database refuses is logged and counted
(`lost`). `flush()` writes at once and waits for everything queued so far: the operator's
reads of the trail call it, so they see every read that finished before.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from ehealthlab.fhir.mapping.rows import as_utc
from ehealthlab.fhir.search.audit_events import AuditRow
from ehealthlab.store.db import Connection

log = logging.getLogger(__name__)

Json = dict[str, Any]
Interaction = Literal["read", "search-type", "operation"]

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"

_INTERACTION_DISPLAY = {"read": "read", "search-type": "search type", "operation": "operation"}
_REST = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
_SYSTEM_OBJECT = {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"}
_PERSON = {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"}
_PATIENT_ROLE = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_SOURCE = {
    "site": "ehealthlab",
    "observer": {"display": "ehealthlab FHIR API"},
    "type": [{"system": SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}],
}

_COLUMNS = """INSERT INTO fhir_audit_events (organisation_id, token_id, action, interaction,
    resource_type, resource_id, operation, query, patient_ids, outcome, http_status, detail,
    results, recorded)"""
_VALUES = """%s::uuid, %s::uuid, %s::char(1), %s::text, %s::text, %s::text, %s::text, %s::text,
    %s::uuid[], %s::smallint, %s::smallint, %s::text, %s::integer,
    coalesce(%s::timestamptz, clock_timestamp())"""
#: one entry in the caller's transaction, which would otherwise write nothing: committing
#: it asynchronously (set in the same statement: one round trip) spares the reader the wait
#: for the WAL; a database crash may lose the last few hundred milliseconds of such entries
_INSERT = (
    f"{_COLUMNS} SELECT {_VALUES}"  # noqa: S608 - fixed text, values are bound
    " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit"
)
_INSERT_ONE = f"{_COLUMNS} VALUES ({_VALUES})"
#: entries waiting for the writer, at most (then requests write their own)
QUEUE_CAPACITY = 10_000
#: entries written in one transaction, at most
BATCH_SIZE = 500
#: how long the writer waits for more entries once one has come
LINGER_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One read or search of patient data, as it is recorded."""

    organisation_id: UUID
    token_id: UUID
    interaction: Interaction
    resource_type: str
    http_status: int
    resource_id: str | None = None
    #: an operation's name, e.g. lastn
    operation: str | None = None
    #: the search parameters as the server understood them (a query string)
    query: str | None = None
    #: patients whose data was asked for or answered
    patient_ids: tuple[UUID, ...] = ()
    detail: str = ""
    results: int | None = None
    #: when it happened (None: when it is written)
    recorded: datetime | None = None

    @property
    def action(self) -> str:
        """AuditEvent.action: R for a read, E (execute) for a search or operation."""
        return "R" if self.interaction == "read" else "E"

    @property
    def outcome(self) -> int:
        """AuditEvent.outcome: 0 success, 4 a refusal or bad request, 8 a server failure."""
        if self.http_status < 400:
            return 0
        return 4 if self.http_status < 500 else 8


def record(conn: Connection, entry: AuditEntry) -> None:
    """Write the entry in the caller's transaction."""
    conn.execute(_INSERT, _parameters(entry))


def _parameters(entry: AuditEntry) -> tuple[Any, ...]:
    return (
        entry.organisation_id,
        entry.token_id,
        entry.action,
        entry.interaction,
        entry.resource_type,
        entry.resource_id,
        entry.operation,
        _text(entry.query),
        sorted(set(entry.patient_ids)),
        entry.outcome,
        entry.http_status,
        _text(entry.detail),
        entry.results,
        entry.recorded,
    )


class AuditWriter:
    """Writes entries off the request path, in batches, from a thread of its own (see the
    module docstring). `start()` before use, `close()` to drain and stop."""

    _WAKE = object()  # flush(): write what is queued without lingering

    def __init__(
        self,
        pool: ConnectionPool[Connection],
        *,
        capacity: int = QUEUE_CAPACITY,
        batch_size: int = BATCH_SIZE,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._linger = linger
        self._queue: queue.Queue[object] = queue.Queue(capacity)
        self._progress = threading.Condition()
        self._submitted = 0  # entries queued so far
        self._handled = 0  # of those, written or given up
        self._thread = threading.Thread(target=self._run, name="ehl-fhir-audit", daemon=True)
        self._closing = threading.Event()
        #: entries the requests wrote themselves because the queue was full
        self.overflowed = 0
        #: entries that could not be written (each logged)
        self.lost = 0

    def start(self) -> AuditWriter:
        self._thread.start()
        return self

    def submit(self, entry: AuditEntry) -> bool:
        """Queue the entry; False when the queue is full: the caller must `write` it."""
        with self._progress:
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                self.overflowed += 1
                if self.overflowed % 1000 == 1:
                    log.warning(
                        "audit queue full: requests write their entries themselves (%d so far)",
                        self.overflowed,
                    )
                return False
            self._submitted += 1
            return True

    def write(self, entry: AuditEntry) -> None:
        """Write the entry now, in a transaction of its own (what `submit` could not queue)."""
        with self._pool.connection() as conn, conn.transaction():
            record(conn, entry)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every entry queued before the call is written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._progress:
            target = self._submitted
            if self._handled >= target:
                return True
        try:
            self._queue.put(self._WAKE, timeout=timeout)
        except queue.Full:
            return False
        with self._progress:
            while self._handled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._progress.wait(remaining)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self._closing.set()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[AuditEntry] = []
            item = self._queue.get()
            deadline = time.monotonic() + self._linger
            while True:
                if item is None:
                    stop = True
                elif item is self._WAKE:
                    deadline = 0.0  # write what is there, now
                elif isinstance(item, AuditEntry):
                    batch.append(item)
                if stop or len(batch) >= self._batch_size:
                    break
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
                with self._progress:
                    self._handled += len(batch)
                    self._progress.notify_all()

    def _write(self, batch: Sequence[AuditEntry]) -> None:
        """One transaction for the batch; retried while the database is unreachable (until
        close), entry by entry when the database refuses the batch."""
        pause = 0.05
        while True:
            try:
                self._insert(batch)
                return
            except psycopg.OperationalError as exc:
                if self._closing.is_set():
                    self._give_up(batch, exc)
                    return
                log.warning("audit entries wait: the database is unreachable (%s)", exc)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
            except psycopg.Error:
                break
        for entry in batch:
            try:
                self._insert([entry])
            except psycopg.Error as exc:
                self._give_up([entry], exc)

    def _insert(self, batch: Sequence[AuditEntry]) -> None:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(_INSERT_ONE, [_parameters(entry) for entry in batch])

    def _give_up(self, entries: Sequence[AuditEntry], exc: Exception) -> None:
        self.lost += len(entries)
        for entry in entries:
            log.error("audit entry lost (%s): %r", exc, entry)


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; an error message may quote one from the request."""
    return None if value is None else value.replace("\x00", "\ufffd")


def audit_event_json(row: AuditRow) -> Json:
    """A recorded read or search as a FHIR R4 AuditEvent (IHE BALP's shape for RESTful
    activity: type rest, subtype the interaction, the caller as requesting agent)."""
    entities: list[Json] = []
    if row.resource_id is not None:
        entities.append(
            {
                "what": {"reference": f"{row.resource_type}/{row.resource_id}"},
                "type": _SYSTEM_OBJECT,
            }
        )
    else:
        entity: Json = {"type": _SYSTEM_OBJECT}
        if row.operation is not None:
            entity["description"] = f"{row.resource_type}/${row.operation}"
        else:
            entity["description"] = f"{row.resource_type} search"
        entity["query"] = base64.b64encode((row.query or "").encode()).decode("ascii")
        entities.append(entity)
    entities.extend(
        {"what": {"reference": f"Patient/{patient}"}, "type": _PERSON, "role": _PATIENT_ROLE}
        for patient in row.patient_ids
    )
    event: Json = {
        "resourceType": "AuditEvent",
        "id": str(row.id),
        "type": _REST,
        "subtype": [
            {
                "system": RESTFUL_INTERACTION,
                "code": row.interaction,
                "display": _INTERACTION_DISPLAY[row.interaction],
            }
        ],
        "action": row.action,
        "recorded": as_utc(row.recorded).isoformat().replace("+00:00", "Z"),
        "outcome": str(row.outcome),
    }
    if row.detail:
        event["outcomeDesc"] = row.detail
    event["agent"] = [
        {
            "who": {"reference": f"Organization/{row.organisation_id}"},
            "altId": str(row.token_id),
            "requestor": True,
        }
    ]
    event["source"] = _SOURCE
    event["entity"] = entities
    return event
