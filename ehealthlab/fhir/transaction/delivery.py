"""Readings delivered as a FHIR Bundle over HTTPS, stored exactly as MQTT ingest stores them.

bundle.py (with entry.py and observation_readings.py) and messages.py turn the Bundle into
the device contract's readings messages; from there the path is ingest's own:
`pipeline.judge` validates each message, the ReadingWriter stores the accepted readings once
(duplicates counted, conflicts refused), rejected ones become dead letters with their reason
code, the message is logged (once, however often it is delivered), readings find their
patient through enrolments and the alert rules see them — in one transaction, with the same
locks, as `IngestWorker._write_batch` does for a batch.

What differs from MQTT is only the envelope: the receive time is the API's clock, QoS is 1
(at least once, as HTTP retries are), a reading's dead letter keeps the Observation as the
start-up sent it, and the device's feedback is the response Bundle instead of a message on
its feedback topic.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import orjson
import psycopg
from psycopg_pool import ConnectionPool

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.clock import CLOCK_TOLERANCE_S
from ehealthlab.contract.messages import READINGS_SCHEMA
from ehealthlab.contract.outcome import MessageOutcome, Rejection
from ehealthlab.contract.timestamps import TimestampError, parse_timestamp
from ehealthlab.contract.topics import readings_topic
from ehealthlab.errors import ServiceUnavailableError
from ehealthlab.fhir.mapping.fast import Json
from ehealthlab.fhir.transaction.bundle import read_bundle
from ehealthlab.fhir.transaction.messages import (
    ContractMessage,
    contract_messages,
    message_id_base,
)
from ehealthlab.fhir.transaction.plan import EntryPlan, Fault
from ehealthlab.fhir.transaction.response import (
    EntryResult,
    ReadingResult,
    not_your_device,
    response_bundle,
)
from ehealthlab.ingest.alerts import AlertRules
from ehealthlab.ingest.pipeline import (
    JudgedMessage,
    KnownDevice,
    judge,
)
from ehealthlab.ingest.store_batch import StoredMessage, store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.db import Connection
from ehealthlab.store.readings import ReadingWriter
from ehealthlab.store.rejections import RejectedRow

#: QoS recorded for a delivery over HTTP: at least once, like a device's QoS 1 publication
HTTP_QOS = 1


def deliver_bundle(
    pool: ConnectionPool[Connection],
    organisation_id: UUID,
    body: bytes,
    rules: AlertRules,
    *,
    received_at: datetime | None = None,
) -> Json:
    """Store a start-up's transaction or batch Bundle of Observations; the response Bundle.

    bundle.BundleError when the body is not a Bundle this server takes (nothing is
    stored); ServiceUnavailableError when the database cannot be reached.
    """
    plan = read_bundle(body)
    received = received_at or datetime.now(UTC)
    with _connection(pool) as conn:
        devices = own_devices(conn, organisation_id, plan.device_ids())
        refusals = {
            entry.index: not_your_device(entry)
            for entry in plan.entries
            if entry.refusal is None and entry.device_id not in devices
        }
        messages = contract_messages(
            plan,
            devices,
            msg_id=message_id_base(plan, f"fhir-{uuid4().hex}"),
            sent_at=plan.timestamp or received.isoformat(),
        )
        entries = {entry.index: entry for entry in plan.entries}
        judged = [judge_message(m, entries, devices, received) for m in messages]
        stored = store_judged(conn, ReadingWriter(conn), judged, rules).messages
    return response_bundle(plan, entry_results(messages, stored), refusals)


@contextmanager
def _connection(pool: ConnectionPool[Connection]) -> Iterator[Connection]:
    try:
        with pool.connection() as conn:
            yield conn
    except psycopg.OperationalError as exc:  # PoolTimeout is one too
        raise ServiceUnavailableError(
            f"the database is unavailable ({str(exc).strip().splitlines()[0]})"
        ) from exc


def own_devices(
    conn: Connection, organisation_id: UUID, device_ids: Collection[str]
) -> dict[str, KnownDevice]:
    """Those of `device_ids` that are the organisation's active (unrevoked) devices: the
    only ones it may deliver for, as the broker lets a device publish only on its topics."""
    if not device_ids:
        return {}
    rows = conn.execute(
        "SELECT device_id, device_type, simulated FROM devices WHERE organisation_id = %s"
        " AND device_id = ANY(%s) AND revoked_at IS NULL",
        (organisation_id, sorted(device_ids)),
    ).fetchall()
    return {str(d): KnownDevice(str(t), bool(s)) for d, t, s in rows}


# -- judging: the contract's validation, then the Bundle's entries put back -----------------


def judge_message(
    message: ContractMessage,
    entries: Mapping[int, EntryPlan],
    devices: Mapping[str, KnownDevice],
    received_at: datetime,
) -> JudgedMessage:
    """ingest's verdict on one contract message, with what it says about positions in the
    message turned into Bundle entries (a rejection's `index` is the entry's, its payload
    the Observation as sent), and the entries' faults added as rejections."""
    delivery = ReceivedMessage(
        topic=readings_topic(message.device_id),
        payload=message.payload or _envelope(message),
        qos=HTTP_QOS,
        retain=False,
        mid=0,
        received_at=received_at,
        broker_stamped=True,
    )
    if message.payload:
        judged = judge(delivery, devices.get)
    else:  # every reading of the device was a fault: nothing for the contract to judge
        judged = _nothing_to_judge(delivery, message, received_at)
    outcome = judged.outcome
    accepted = tuple(r._replace(index=message.sources[r.index][0]) for r in outcome.accepted)
    rejected: list[tuple[Rejection, RejectedRow]] = []
    for rejection, row in zip(outcome.rejected, judged.rejections, strict=True):
        if rejection.index is None:  # the whole message (never expected: we built it)
            rejected.append((rejection, row))
            continue
        entry = entries[message.sources[rejection.index][0]]
        rejected.append(
            (
                replace(rejection, index=entry.index, raw=entry.raw),
                replace(row, item_index=entry.index, payload=entry.raw),
            )
        )
    for entry, fault in message.faults:
        rejected.append(_fault_rejection(entry, fault, judged))
    rejected.sort(key=lambda pair: -1 if pair[0].index is None else pair[0].index)
    return replace(
        judged,
        outcome=replace(
            outcome, accepted=accepted, rejected=tuple(rejection for rejection, _ in rejected)
        ),
        rejections=tuple(row for _, row in rejected),
    )


def _envelope(message: ContractMessage) -> bytes:
    """The message of a device whose every reading was a fault: an envelope without readings
    (what is logged, and what identifies the delivery when it comes again)."""
    return orjson.dumps(
        {
            "schema": READINGS_SCHEMA,
            "msg_id": message.msg_id,
            "sent_at": message.sent_at,
            "readings": [],
        }
    )


def _nothing_to_judge(
    delivery: ReceivedMessage, message: ContractMessage, received_at: datetime
) -> JudgedMessage:
    sent_at = parse_timestamp(message.sent_at)  # checked when the Bundle was read
    offset = (received_at - sent_at).total_seconds()
    outcome = MessageOutcome(
        received_at=received_at,
        msg_id=message.msg_id,
        sent_at=sent_at,
        clock_offset_s=offset,
        clock_corrected=abs(offset) > CLOCK_TOLERANCE_S,
        accepted=(),
        rejected=(),
        message_rejection=None,
    )
    return JudgedMessage(delivery, message.device_id, outcome, (), ())


def _fault_rejection(
    entry: EntryPlan, fault: Fault, judged: JudgedMessage
) -> tuple[Rejection, RejectedRow]:
    """A fault as the contract's rejection and its dead letter, times as for any rejected
    reading (clock-corrected like the message's readings)."""
    outcome = judged.outcome
    at = _time(entry.at)
    measured_at = at
    if at is not None and outcome.clock_corrected and outcome.clock_offset_s is not None:
        try:
            measured_at = at + timedelta(seconds=outcome.clock_offset_s)
        except OverflowError:
            measured_at = None
    rejection = Rejection(
        index=entry.index,
        seq=fault.seq,
        metric=fault.metric,
        at=at,
        reason=fault.reason,
        detail=fault.detail,
        raw=entry.raw,
    )
    row = RejectedRow(
        received_at=outcome.received_at,
        device_id=judged.device_id,
        reason=str(fault.reason),
        detail=fault.detail,
        payload=entry.raw,
        msg_id=outcome.msg_id,
        item_index=entry.index,
        seq=fault.seq,
        metric=fault.metric if fault.metric in METRICS else None,
        at=at,
        measured_at=measured_at,
    )
    return rejection, row


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_timestamp(text)
    except TimestampError:
        return None


# -- storing: the ingest worker's batch transaction ---------------------------------------------


# -- what each entry gets back ---------------------------------------------------------------


def entry_results(
    messages: Sequence[ContractMessage], stored: Sequence[StoredMessage]
) -> dict[int, EntryResult]:
    """Every reading's fate, by Bundle entry."""
    results: dict[int, EntryResult] = {}
    for message, item in zip(messages, stored, strict=True):
        for entry, result in _message_results(message, item):
            results.setdefault(entry, EntryResult()).readings.append(result)
    return results


def _message_results(
    message: ContractMessage, item: StoredMessage
) -> Iterator[tuple[int, ReadingResult]]:
    outcome = item.judged.outcome
    paths = {(entry, metric): path for entry, metric, path in message.sources}
    conflicting = {conflict.index for conflict in item.conflicts}
    conflict_rows = {(r.item_index, r.metric): r for r in item.settled.conflict_rejections}
    for position, reading in enumerate(outcome.accepted):
        path = paths.get((reading.index, reading.metric))
        if item.again:
            yield reading.index, ReadingResult(reading.metric, "again", reading.at, expression=path)
        elif position in conflicting:
            row = conflict_rows[(reading.index, reading.metric)]
            yield (
                reading.index,
                ReadingResult(reading.metric, "rejected", reading.at, row.reason, row.detail, path),
            )
        elif position in item.duplicates:
            yield (
                reading.index,
                ReadingResult(reading.metric, "duplicate", reading.at, expression=path),
            )
        else:
            yield (
                reading.index,
                ReadingResult(reading.metric, "created", reading.at, expression=path),
            )
    for rejection in outcome.rejected:
        if rejection.index is None:  # the whole message: every entry in it
            for entry, metric, path in message.sources:
                yield (
                    entry,
                    ReadingResult(
                        metric, "rejected", None, rejection.reason, rejection.detail, path
                    ),
                )
            continue
        path = paths.get((rejection.index, rejection.metric or "")) or _fault_path(
            message, rejection
        )
        yield (
            rejection.index,
            ReadingResult(
                rejection.metric, "rejected", rejection.at, rejection.reason, rejection.detail, path
            ),
        )


def _fault_path(message: ContractMessage, rejection: Rejection) -> str | None:
    for entry, fault in message.faults:
        if entry.index == rejection.index and fault.detail == rejection.detail:
            return fault.expression
    return None
