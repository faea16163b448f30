"""The conformance check: what a device sent over a window, judged point by point against
the device contract. Pure: it reads `Observations` gathered from the store
(`ehealthlab/gateway/observations.py`) and returns a `Report`.

This is a start-up's first conversation with the LAB, so each check says what was seen, what
is wrong, and what to change, with the contract's own words and numbers.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ehealthlab.contract.clock import CLOCK_TOLERANCE_S

Verdict = Literal["pass", "warn", "fail", "not_observed"]
Overall = Literal["conformant", "not_conformant", "not_enough_observed"]

#: reasons for which a whole message was refused
MESSAGE_REASONS = frozenset({"malformed_json", "schema_violation", "payload_too_large"})
#: a message whose oldest reading is older than this was sent from a backlog
BACKLOG_AGE = timedelta(minutes=10)
#: checks that must have been observed for a verdict of conformant
ESSENTIAL = ("connection", "schema", "qos", "status")


@dataclass(frozen=True, slots=True)
class MessageSeen:
    received_at: datetime
    msg_id: str | None
    qos: int
    payload_bytes: int
    readings: int
    accepted: int
    duplicates: int
    rejected: int
    clock_offset_s: float | None
    oldest_at: datetime | None
    newest_at: datetime | None


@dataclass(frozen=True, slots=True)
class RejectionSeen:
    received_at: datetime
    reason: str
    detail: str
    seq: int | None
    item_index: int | None
    msg_id: str | None


@dataclass(frozen=True, slots=True)
class StatusSeen:
    received_at: datetime
    status: str  # online, offline, or invalid (a payload that is not a status message)
    retained: bool


@dataclass(frozen=True)
class Observations:
    device_id: str
    device_type: str
    window_from: datetime
    window_to: datetime
    messages: Sequence[MessageSeen]
    rejections: Sequence[RejectionSeen]
    #: every seq seen in the window: stored, duplicate or rejected
    seqs: Sequence[int]
    status_events: Sequence[StatusSeen]
    #: the device's presence now, and whether it was ever seen at all
    current_status: str = "never_seen"


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    verdict: Verdict
    summary: str
    details: list[str] = field(default_factory=list)
    advice: str | None = None


@dataclass(frozen=True)
class Report:
    device_id: str
    window_from: datetime
    window_to: datetime
    verdict: Overall
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "fail"]


def assess(obs: Observations) -> Report:
    """Judge a device's behaviour over a window; the report lists every check."""
    checks = [
        _connection(obs),
        _topic(obs),
        _schema(obs),
        _catalogue(obs),
        _units(obs),
        _clock(obs),
        _seq(obs),
        _qos(obs),
        _status(obs),
        _backlog(obs),
        _duplicates(obs),
    ]
    if any(c.verdict == "fail" for c in checks):
        verdict: Overall = "not_conformant"
    elif any(c.verdict == "not_observed" for c in checks if c.id in ESSENTIAL):
        verdict = "not_enough_observed"
    else:
        verdict = "conformant"
    return Report(obs.device_id, obs.window_from, obs.window_to, verdict, checks)


# -- the checks ---------------------------------------------------------------------------


def _connection(obs: Observations) -> Check:
    title = "Credentials and client id"
    if obs.messages or obs.status_events:
        return Check(
            "connection",
            title,
            "pass",
            f"connected as {obs.device_id!r} with its own credentials and client id "
            "(the broker refuses any other)",
        )
    return Check(
        "connection",
        title,
        "not_observed",
        "nothing arrived from the device in the window",
        advice=f"connect with username and client id {obs.device_id!r} and the password "
        "you were given; anonymous connections and other client ids are refused",
    )


def _topic(obs: Observations) -> Check:
    title = "Topic"
    topic = f"ehl/v1/devices/{obs.device_id}/readings"
    if obs.messages:
        return Check("topic", title, "pass", f"{len(obs.messages)} messages on {topic}")
    return Check(
        "topic",
        title,
        "not_observed",
        f"no message on {topic}",
        advice=f"publish readings on {topic}; anything else is refused by the broker",
    )


def _schema(obs: Observations) -> Check:
    title = "Message schema (ehl.readings/1)"
    whole = [r for r in obs.rejections if r.item_index is None and r.reason in MESSAGE_REASONS]
    items = [
        r for r in obs.rejections if r.item_index is not None and r.reason == "schema_violation"
    ]
    if not obs.messages:
        return Check("schema", title, "not_observed", "no message to judge")
    if whole or items:
        reasons = Counter(r.reason for r in whole)
        summary = (
            f"{len(whole)} of {len(obs.messages)} messages refused whole"
            + (f" ({_counts(reasons)})" if reasons else "")
            + (f", {len(items)} readings refused for their shape" if items else "")
        )
        return Check(
            "schema",
            title,
            "fail",
            summary,
            _examples(whole + items),
            advice="follow docs/device-contract.md and validate against "
            "docs/schemas/readings.schema.json before sending",
        )
    return Check("schema", title, "pass", f"all {len(obs.messages)} messages well formed")


def _catalogue(obs: Observations) -> Check:
    title = "Metrics and plausible ranges"
    bad = [
        r
        for r in obs.rejections
        if r.reason in ("unknown_metric", "metric_not_for_device_type", "out_of_range")
    ]
    readings = sum(m.readings for m in obs.messages)
    if not readings:
        return Check("catalogue", title, "not_observed", "no reading to judge")
    if bad:
        reasons = _counts(Counter(r.reason for r in bad))
        return Check(
            "catalogue",
            title,
            "fail",
            f"{len(bad)} of {readings} readings refused ({reasons})",
            _examples(bad),
            advice=f"a {obs.device_type} may send only the metrics of its type, in "
            "the catalogue's plausible ranges",
        )
    return Check("catalogue", title, "pass", f"all {readings} readings known and plausible")


def _units(obs: Observations) -> Check:
    title = "Units (UCUM)"
    bad = [r for r in obs.rejections if r.reason == "unit_mismatch"]
    if not sum(m.readings for m in obs.messages):
        return Check("units", title, "not_observed", "no reading to judge")
    if bad:
        return Check(
            "units",
            title,
            "fail",
            f"{len(bad)} readings with a unit not accepted",
            _examples(bad),
            advice="send the canonical UCUM unit of each metric (e.g. 'mm[Hg]', '/min', "
            "'Cel'); the details above name the right spelling",
        )
    return Check("units", title, "pass", "every unit accepted")


def _clock(obs: Observations) -> Check:
    title = "Timestamps and clock"
    offsets = [m.clock_offset_s for m in obs.messages if m.clock_offset_s is not None]
    future = [r for r in obs.rejections if r.reason == "timestamp_in_future"]
    if not offsets:
        return Check("clock", title, "not_observed", "no message with a readable sent_at")
    worst = max(offsets, key=abs)
    wrong = [o for o in offsets if abs(o) > CLOCK_TOLERANCE_S]
    details = [
        f"clock offset (receive time - sent_at): median {_median(offsets):+.1f} s, "
        f"worst {worst:+.1f} s over {len(offsets)} messages"
    ]
    details += _examples(future)
    if wrong or future:
        summary = (
            f"{len(wrong)} messages sent with the clock off by more than {CLOCK_TOLERANCE_S:.0f} s"
            if wrong
            else ""
        )
        if future:
            summary += ("; " if summary else "") + f"{len(future)} readings dated in the future"
        return Check(
            "clock",
            title,
            "fail",
            summary,
            details,
            advice="set the device clock by NTP (or from the hub); readings are kept "
            "and corrected, but a wrong clock blurs their day and latency",
        )
    return Check("clock", title, "pass", f"clock within {CLOCK_TOLERANCE_S:.0f} s", details)


def _seq(obs: Observations) -> Check:
    title = "seq continuity"
    seqs = sorted(set(obs.seqs))
    if len(seqs) < 2:
        return Check("seq", title, "not_observed", "fewer than two readings to compare")
    missing = _gaps(seqs)
    lost = sum(b - a + 1 for a, b in missing)
    span = seqs[-1] - seqs[0] + 1
    if missing:
        shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in missing[:8])
        more = f" and {len(missing) - 8} more gaps" if len(missing) > 8 else ""
        return Check(
            "seq",
            title,
            "fail",
            f"{lost} of {span} seq numbers never arrived",
            [f"missing: {shown}{more}"],
            advice="seq must grow by exactly 1 for every reading taken and never be "
            "reused; keep unsent readings (with their seq) and send them later",
        )
    return Check("seq", title, "pass", f"{span} consecutive seq numbers, {seqs[0]} to {seqs[-1]}")


def _qos(obs: Observations) -> Check:
    title = "QoS 1"
    if not obs.messages:
        return Check("qos", title, "not_observed", "no message to judge")
    low = [m for m in obs.messages if m.qos < 1]
    if low:
        return Check(
            "qos",
            title,
            "fail",
            f"{len(low)} of {len(obs.messages)} messages sent at QoS 0",
            advice="publish readings at QoS 1 so the broker acknowledges each",
        )
    return Check("qos", title, "pass", f"all {len(obs.messages)} messages at QoS 1")


def _status(obs: Observations) -> Check:
    title = "Status and Last Will"
    events = obs.status_events
    if not events:
        return Check(
            "status",
            title,
            "not_observed" if not obs.messages else "fail",
            "no status message",
            advice=_STATUS_ADVICE,
        )
    invalid = [e for e in events if e.status == "invalid"]
    online = [e for e in events if e.status == "online"]
    offline = [e for e in events if e.status == "offline"]
    details = [
        f"{len(online)} online, {len(offline)} offline (Last Will or clean), "
        f"{len(invalid)} unreadable"
    ]
    if invalid:
        return Check(
            "status",
            title,
            "fail",
            'status payloads that are not {"state": ...}',
            details,
            advice=_STATUS_ADVICE,
        )
    if not online:
        return Check(
            "status",
            title,
            "fail",
            "the device never said it was online",
            details,
            advice=_STATUS_ADVICE,
        )
    if not offline:
        return Check(
            "status",
            title,
            "pass",
            "online published; no disconnection seen yet, so the Last Will was not exercised",
            details,
        )
    return Check("status", title, "pass", "online on connect, offline when it went away", details)


_STATUS_ADVICE = (
    'on every connection publish {"state": "online"} retained at QoS 1 on '
    'ehl/v1/devices/<id>/status, with a Last Will of {"state": "offline"} (retained, QoS 1) '
    "on the same topic"
)


def _age_when_sent(message: MessageSeen) -> timedelta:
    """How old the message's oldest reading was when the device sent it, on the device's own
    clock (sent_at - at = received_at - offset - at): a device with a skewed clock does not
    make every message look like a backlog."""
    if message.oldest_at is None:
        return timedelta(0)
    offset = timedelta(seconds=message.clock_offset_s or 0.0)
    return message.received_at - offset - message.oldest_at


def _backlog(obs: Observations) -> Check:
    title = "Backlog after a reconnect"
    backlog = [m for m in obs.messages if _age_when_sent(m) > BACKLOG_AGE]
    if not backlog:
        return Check(
            "backlog",
            title,
            "not_observed",
            "no message carried readings older than 10 minutes (no backlog sent)",
        )
    ordered = sorted(backlog, key=lambda m: m.received_at)
    backwards = [
        (a, b)
        for a, b in itertools.pairwise(ordered)
        if a.oldest_at is not None and b.oldest_at is not None and b.oldest_at < a.oldest_at
    ]
    readings = sum(m.readings for m in backlog)
    if backwards:
        return Check(
            "backlog",
            title,
            "warn",
            f"{len(backlog)} backlog messages ({readings} readings), not oldest first",
            advice="send the backlog oldest first, each reading with its original `at` and `seq`",
        )
    return Check(
        "backlog",
        title,
        "pass",
        f"{len(backlog)} backlog messages ({readings} readings) sent oldest first",
    )


def _duplicates(obs: Observations) -> Check:
    title = "Duplicates"
    duplicates = sum(m.duplicates for m in obs.messages)
    readings = sum(m.readings for m in obs.messages)
    conflicts = [r for r in obs.rejections if r.reason == "conflicting_duplicate"]
    if conflicts:
        return Check(
            "duplicates",
            title,
            "fail",
            f"{len(conflicts)} readings resent with another value",
            _examples(conflicts),
            advice="a reading (device, metric, at) is stored once; never change a value "
            "you already sent",
        )
    if not readings:
        return Check("duplicates", title, "not_observed", "no reading to judge")
    return Check(
        "duplicates",
        title,
        "pass",
        f"{duplicates} of {readings} readings were resent (harmless: stored once)",
    )


# -- helpers --------------------------------------------------------------------------------


def _gaps(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Missing ranges between consecutive distinct sorted seqs."""
    return [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b - a > 1]


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counter.most_common())


def _examples(rejections: Sequence[RejectionSeen], limit: int = 3) -> list[str]:
    return [
        f"{r.reason}" + (f" (seq {r.seq})" if r.seq is not None else "") + f": {r.detail}"
        for r in list(rejections)[:limit]
    ]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
