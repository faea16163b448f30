"""Storing a batch of judged readings messages: the one transaction behind MQTT ingest and
FHIR transaction Bundles alike, so both paths deduplicate, dead-letter, log, attribute and
alert identically.

In one transaction: a share lock on the batch's devices (an enrolment being recorded waits,
or is waited for, never missed), the message claims (a message delivered again is stored
once), readings (deduplicated, attributed), rejections and conflicts, the message log and
alerts. Devices' last-seen times follow in a short transaction of their own.

On a worker's connection a batch waits for the server seven times: BEGIN with the claims;
the staging COPY (twice); the readings' INSERT; the message log's COPY (twice); the
rejections and delivery counts with the COMMIT (`PipelinedTransaction`). Each wait is a
wake-up queued behind everything else on a machine the load fills. (The message log as an
INSERT of arrays would join the COMMIT, but psycopg dumps binary arrays element by element
in Python: 5-8 µs of a worker's CPU a message more than its binary COPY, measured.)

Arrays go to the server as binary parameters (`%b`): psycopg quotes and escapes a text array
element by element in Python, which cost 10-14 µs of CPU a message for the claim's four
arrays, against 2.4 µs in binary (measured, 200 messages a query).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ehealthlab.ingest.alerting import alert_scope, raise_alerts_for
from ehealthlab.ingest.alerts import AlertRules
from ehealthlab.ingest.pipeline import JudgedMessage, MessageLog, Settled, settle
from ehealthlab.records import record
from ehealthlab.store.db import Connection
from ehealthlab.store.readings import Conflict, ReadingRow, ReadingWriter, WriteResult
from ehealthlab.store.rejections import RejectedRow, write_rejections
from ehealthlab.store.transactions import PipelinedTransaction, idle_autocommit

MessageKey = tuple[str, str, bytes]
#: a message without duplicates (almost all): one shared empty set, not one each
_NONE: frozenset[int] = frozenset()


@record
class StoredMessage:
    """What the store made of one judged message."""

    judged: JudgedMessage
    settled: Settled
    #: delivered before (same device, msg_id and readings): nothing was written again
    again: bool
    #: positions in judged.readings found already stored with the same value
    duplicates: frozenset[int]
    conflicts: tuple[Conflict, ...]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    messages: list[StoredMessage]
    result: WriteResult
    rejected: int
    redeliveries: int
    alerts: int


class LastSeenWrites:
    """The last-seen time a worker last wrote for each device, so that a device sending many
    messages a second costs the devices table one row update a second (`every_s`), not one
    a batch: at 5,000 messages a second from 40 devices, a batch every few milliseconds
    updated the same 40 rows. A stored time is at most `every_s` behind the device's last
    message; the dashboards show it to the minute, and presence judges silence in minutes."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every = timedelta(seconds=every_s)
        self._written: dict[str, datetime] = {}

    def due(self, last_seen: dict[str, datetime]) -> dict[str, datetime]:
        """The devices whose time moved on by `every_s` or more since this worker wrote it."""
        return {
            device: seen
            for device, seen in last_seen.items()
            if (written := self._written.get(device)) is None or seen - written >= self.every
        }

    def written(self, last_seen: dict[str, datetime]) -> None:
        self._written.update(last_seen)


def store_judged(
    conn: Connection,
    writer: ReadingWriter,
    judged: Sequence[JudgedMessage],
    rules: AlertRules,
    last_seen: LastSeenWrites | None = None,
) -> StoredBatch:
    """Store judged messages (see the module's docstring); `writer` is `conn`'s. With
    `last_seen` (a worker's), a device's last-seen time is written at most once a second."""
    writer.prepare([row for item in judged for row in item.readings])
    keys = [_message_key(item) for item in judged]
    with PipelinedTransaction(conn) as transaction:
        again = _claim_messages(conn, judged, keys, transaction)
        rows: list[ReadingRow] = []
        owners: list[tuple[int, int]] = []  # (message, reading) of each row
        for m, item in enumerate(judged):
            if again[m] is None:  # a message delivered again was stored before
                rows.extend(item.readings)
                if len(item.readings) == 1:  # most messages: 0.1 µs, not 0.7 for the general
                    owners.append((m, 0))
                else:
                    owners.extend([(m, r) for r in range(len(item.readings))])
        result = writer.write_in_transaction(rows, alert_scope(rules))
        duplicates: list[set[int]] = [set() for _ in judged]
        for index in result.duplicates:
            m, r = owners[index]
            duplicates[m].add(r)
        conflicts: list[list[Conflict]] = [[] for _ in judged]
        for conflict in result.conflicts:
            m, r = owners[conflict.index]
            conflicts[m].append(replace(conflict, index=r))
        settled = [settle(item, len(duplicates[m]), conflicts[m]) for m, item in enumerate(judged)]
        rejected: list[RejectedRow] = []
        logs: list[tuple[MessageLog, MessageKey]] = []
        for item, verdict, key, repeated in zip(judged, settled, keys, again, strict=True):
            if repeated is None:
                rejected.extend(item.rejections)
                rejected.extend(verdict.conflict_rejections)
                logs.append((verdict.log, key))
        alerts = raise_alerts_for(conn, result.attributed, rules)  # reads its rowcount
        _write_message_logs(conn, logs)  # COPY: it cannot join the closing group
        with transaction.closing():  # what nothing here reads back, and COMMIT: one wait
            write_rejections(conn, rejected)
            _count_deliveries(conn, judged, again)
    if judged:
        _touch_devices(conn, judged, last_seen)  # after commit: no row lock across batches
    messages = [
        StoredMessage(
            item,
            settled[m],
            again[m] is not None,
            frozenset(duplicates[m]) if duplicates[m] else _NONE,
            tuple(conflicts[m]) if conflicts[m] else (),
        )
        for m, item in enumerate(judged)
    ]
    redeliveries = sum(key is not None for key in again)
    return StoredBatch(messages, result, len(rejected), redeliveries, alerts)


#: advisory-lock namespace of ingest's per-message locks ("EHLM"), apart from migrations'
_MESSAGE_LOCK_CLASS = 0x45484C4D


def _message_key(item: JudgedMessage) -> MessageKey:
    """A message's identity: device, msg_id and the digest of its content without `sent_at`
    (contract v1.1: a message sent again refreshes `sent_at` and keeps its readings; a msg_id
    reused for other readings is another message). An outcome without a content digest (a
    message the platform assembled itself) is identified by its bytes. A message without a
    msg_id (malformed, or refused whole) is identified by its topic and bytes, under the msg_id
    "" (logged as NULL): delivered again, it is logged and dead-lettered once."""
    if item.outcome.msg_id is None:
        return item.device_id, NO_MSG_ID, _whole_digest(item)
    digest = item.outcome.content_digest
    if digest is None:
        digest = _payload_digest(item)
    return item.device_id, item.outcome.msg_id, digest


#: the msg_id of a message's key when it has none (a contract msg_id is never empty)
NO_MSG_ID = ""


def _whole_digest(item: JudgedMessage) -> bytes:
    """A message without a msg_id: its topic and bytes are all there is to know it by."""
    message = item.message
    return hashlib.sha256(message.topic.encode() + b"\0" + message.payload).digest()[:16]


def _payload_digest(item: JudgedMessage) -> bytes:
    """How messages logged before contract v1.1 were identified: their bytes."""
    return hashlib.sha256(item.message.payload).digest()[:16]


def _claim_messages(
    conn: Connection,
    judged: Sequence[JudgedMessage],
    keys: Sequence[MessageKey],
    transaction: PipelinedTransaction,
) -> list[MessageKey | None]:
    """Each message's key when it was delivered before (in an earlier batch or earlier in
    this one), else None. First a share lock on the batch's devices (an enrolment being
    recorded waits, or is waited for, never missed); then a lock per (device, msg_id), taken
    in one order, which makes two workers given the same message at once (a device retrying,
    in shared mode) agree. Both, and the lookup of named messages, are one call
    (`ehl_claim_messages`, migration 0038): one round trip instead of three, with an index
    probe a message whatever the log's statistics (0039). They open `transaction`: BEGIN,
    the call and the lookup of unnamed messages are answered in one wait.

    Rows logged before migration 0015 have no content digest; a message matches them by
    its bytes, as it did then. Messages without a msg_id match rows without one by digest."""
    legacy = {k: _payload_digest(item) for item, k in zip(judged, keys, strict=True)}
    distinct = list(dict.fromkeys(keys))  # in the batch's order (the locks are ordered in SQL)
    devices = sorted({item.device_id for item in judged})
    unnamed = [k for k in distinct if k[1] == NO_MSG_ID]
    with transaction.opening():  # nothing fetched inside: a fetch would be a wait of its own
        named_found = conn.execute(
            "SELECT claimed_device, claimed_msg_id, claimed_digest"
            " FROM ehl_claim_messages(%b::text[], %s::integer, %b::text[], %b::text[],"
            " %b::bytea[], %b::bytea[])",
            (devices, _MESSAGE_LOCK_CLASS, [k[0] for k in distinct], [k[1] for k in distinct],
             [k[2] for k in distinct], [legacy[k] for k in distinct]),
        )  # fmt: skip
        unnamed_found = None
        if unnamed:
            unnamed_found = conn.execute(
                "SELECT k.device_id, k.digest FROM device_messages m"
                " JOIN unnest(%b::text[], %b::bytea[]) AS k(device_id, digest)"
                " ON m.device_id = k.device_id AND m.msg_id IS NULL"
                " AND m.content_digest = k.digest",
                ([k[0] for k in unnamed], [k[2] for k in unnamed]),
            )
    stored: set[MessageKey] = {(d, m, bytes(h)) for d, m, h in named_found.fetchall()}
    if unnamed_found is not None:
        stored.update((d, NO_MSG_ID, bytes(h)) for d, h in unnamed_found.fetchall())
    again: list[MessageKey | None] = []
    for key in keys:
        again.append(key if key in stored else None)
        stored.add(key)
    return again


def _count_deliveries(
    conn: Connection, judged: Sequence[JudgedMessage], again: Sequence[MessageKey | None]
) -> None:
    """Add each repeated delivery to its message's log row (written now or before; before
    migration 0015, matched by bytes; without a msg_id, by topic and bytes)."""
    repeats: dict[MessageKey, int] = {}
    legacy: dict[MessageKey, bytes] = {}
    for item, key in zip(judged, again, strict=True):
        if key is not None:
            repeats[key] = repeats.get(key, 0) + 1
            legacy.setdefault(key, _payload_digest(item))
    named = sorted(k for k in repeats if k[1] != NO_MSG_ID)
    if named:
        conn.execute(
            "UPDATE device_messages m SET deliveries = m.deliveries + k.n"
            " FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::bytea[], %b::int[])"
            " AS k(device_id, msg_id, digest, payload_digest, n)"
            " WHERE m.device_id = k.device_id AND m.msg_id = k.msg_id"
            " AND (m.content_digest = k.digest"
            " OR (m.content_digest IS NULL AND m.payload_digest = k.payload_digest))",
            ([k[0] for k in named], [k[1] for k in named], [k[2] for k in named],
             [legacy[k] for k in named], [repeats[k] for k in named]),
        )  # fmt: skip
    unnamed = sorted(k for k in repeats if k[1] == NO_MSG_ID)
    if unnamed:
        conn.execute(
            "UPDATE device_messages m SET deliveries = m.deliveries + k.n"
            " FROM unnest(%b::text[], %b::bytea[], %b::int[]) AS k(device_id, digest, n)"
            " WHERE m.device_id = k.device_id AND m.msg_id IS NULL"
            " AND m.content_digest = k.digest",
            ([k[0] for k in unnamed], [k[2] for k in unnamed], [repeats[k] for k in unnamed]),
        )


def _touch_devices(
    conn: Connection, judged: Sequence[JudgedMessage], written: LastSeenWrites | None
) -> None:
    """Each device's last-seen time, in a short transaction of its own after the batch, rows
    updated in device order (no deadlock between workers updating the same devices).

    Committed asynchronously (set in the same statement: no extra round trip), so the worker
    does not wait a second time per batch for the WAL to reach the disk: a database crash
    may lose the last fraction of a second of these times, which the device's next message
    sets again. The readings themselves were committed durably just before."""
    last_seen: dict[str, datetime] = {}
    for item in judged:
        seen = last_seen.get(item.device_id, item.outcome.received_at)
        last_seen[item.device_id] = max(item.outcome.received_at, seen)
    if written is not None:
        last_seen = written.due(last_seen)
        if not last_seen:
            return
    devices = sorted(last_seen)
    statement = (
        "UPDATE devices d SET last_seen_at = GREATEST(d.last_seen_at, s.seen)"
        " FROM (SELECT * FROM unnest(%b::text[], %b::timestamptz[]) AS u(device_id, seen)"
        " ORDER BY device_id) AS s,"
        " (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit"
        " WHERE d.device_id = s.device_id"
    )
    params = (devices, [last_seen[d] for d in devices])
    if idle_autocommit(conn):
        # a worker's connection: the statement is a transaction of its own (one round trip,
        # not BEGIN, UPDATE and COMMIT), and the setting holds until that transaction's commit
        conn.execute(statement, params)
    else:
        with conn.transaction():
            conn.execute(statement, params)
    if written is not None:
        written.written(last_seen)


#: the types of `device_messages`' columns, in the order `_write_message_logs` copies them
_MESSAGE_LOG_TYPES = (
    "text", "timestamptz", "text", "int2", "int4", "int4", "int4", "int4", "int4", "float4",
    "timestamptz", "timestamptz", "bytea",
)  # fmt: skip


def _write_message_logs(conn: Connection, logs: Sequence[tuple[MessageLog, MessageKey]]) -> None:
    """One row per message, by binary COPY: at thousands of messages a second, row by row is
    slow, and so is COPY's text format, which psycopg writes field by field in Python (the
    digest escaped byte by byte): about 14 µs of CPU a message against 3 in binary (py-spy)."""
    if not logs:
        return
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY device_messages (device_id, received_at, msg_id, qos, payload_bytes, readings,"
            " accepted, duplicates, rejected, clock_offset_s, oldest_at, newest_at,"
            " content_digest) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(list(_MESSAGE_LOG_TYPES))
        for entry, key in logs:
            copy.write_row(
                (entry.device_id, entry.received_at, entry.msg_id, entry.qos,
                 entry.payload_bytes, entry.readings, entry.accepted, entry.duplicates,
                 entry.rejected, entry.clock_offset_s, entry.oldest_at, entry.newest_at,
                 key[2])
            )  # fmt: skip
