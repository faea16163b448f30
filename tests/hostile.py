"""Hostile readings messages, generated from a seed: malformed JSON, wrong shapes, absurd
values, nesting deeper than a serialiser goes, byte-level mutations of valid messages and
oversized payloads. Shared by the parser's fuzz test and the 10,000-message run through the
broker and ingest; each message comes with the kind of damage done, to count by.

Every message is made invalid on purpose (no generated message is a clean readings
message), so each must end up kept with a reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from ehealthlab.contract.messages import MAX_PAYLOAD_BYTES, MAX_READINGS, READINGS_SCHEMA

T0 = datetime(2026, 3, 10, 7, 0, tzinfo=UTC)
JUNK_VALUES: list[object] = [
    None, True, "", "x" * 300, -1, 2**63, 1.5e308, -1e-320, [], {}, [[[]]], {"a": {"b": 1}},
    "\u0000", "\ufeff", "\U0001f600", "2026-02-30T00:00:00Z", "9999-12-31T23:59:59+14:00",
]  # fmt: skip


#: values each top-level field can never take in a valid message
INVALID: dict[str, list[object]] = {
    "schema": [None, "", "ehl.readings/2", 1, [], {}],
    "msg_id": [None, "", "x" * 65, 7, "a\u0000b", "tab\t", [], {}],
    "sent_at": [None, "", "2026-02-30T00:00:00Z", "2026-03-10", "now", 0, []],
    "readings": [None, [], {}, "x", 1, [[]] * 0],
}


def _reading(rng: random.Random, seq: int) -> dict[str, object]:
    at = T0 + timedelta(seconds=rng.randrange(86400))
    return {"seq": seq, "metric": "spo2", "value": rng.randrange(90, 100), "unit": "%",
            "at": at.isoformat()}  # fmt: skip


def _message(rng: random.Random, msg_id: str, readings: int = 2) -> dict[str, object]:
    return {
        "schema": READINGS_SCHEMA,
        "msg_id": msg_id,
        "sent_at": (T0 + timedelta(days=1)).isoformat(),
        "readings": [_reading(rng, i) for i in range(readings)],
    }


def _broken_reading(rng: random.Random, msg_id: str) -> bytes:
    """A parsable message whose every reading is wrong in one field (metric, unit, value,
    at, seq or shape): rejected reading by reading."""
    message = _message(rng, msg_id, rng.randrange(1, 4))
    readings = message["readings"]
    assert isinstance(readings, list)
    for item in readings:
        field = rng.choice(["metric", "unit", "value", "at", "seq", "extra", "missing"])
        if field == "extra":
            item["note"] = rng.choice(JUNK_VALUES)
        elif field == "missing":
            del item[rng.choice(sorted(item))]
        elif field == "value":
            item["value"] = rng.choice([-5, 1e9, "97", None, True])
        elif field == "at":
            item["at"] = rng.choice(["yesterday", "2126-01-01T00:00:00Z", "2026-03-10", ""])
        elif field == "seq":
            item["seq"] = rng.choice([-1, 2**63, "1", 1.5])
        else:
            item[field] = rng.choice(["", "SPO2", "spo 2", "bpm", "mm[Hg]", "\u0000"])
    return orjson.dumps(message)


def _broken_envelope(rng: random.Random, msg_id: str) -> bytes:
    """A message whose top level is wrong: a field missing, mistyped, or one too many."""
    message: dict[str, object] = _message(rng, msg_id)
    field = rng.choice(["schema", "msg_id", "sent_at", "readings"])
    action = rng.choice(["delete", "junk", "extra"])
    if action == "delete":
        del message[field]
    elif action == "extra":
        message[rng.choice(["note", "msgid", "Readings", ""])] = rng.choice(JUNK_VALUES)
    else:
        message[field] = rng.choice(INVALID[field])
    if rng.random() < 0.1:
        message["readings"] = [_reading(rng, i) for i in range(MAX_READINGS + 1)]
    return orjson.dumps(message)


def _not_json(rng: random.Random, msg_id: str) -> bytes:
    """Bytes that are not JSON, or not UTF-8, or JSON's near misses."""
    valid = orjson.dumps(_message(rng, msg_id))
    return rng.choice(
        [
            valid[: rng.randrange(1, len(valid))],  # truncated
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),  # noise
            b"\xef\xbb\xbf" + valid,  # a byte-order mark
            valid.replace(b'"%"', b'"\xff\xfe"'),  # invalid UTF-8
            valid.replace(b'"spo2"', b'"\\ud800"'),  # a lone surrogate
            valid.replace(b'"value":9', b'"value":NaN', 1),
            valid.replace(b"}", b",}", 1),  # trailing comma
            valid + b" {}",  # trailing data
            b"",
            b"null",
        ]
    )


def _mutated(rng: random.Random, msg_id: str) -> bytes:
    """A valid message with a few bytes flipped, inserted or deleted; then, to be sure it is
    no longer valid, its schema named wrong when the mutation left the JSON readable."""
    data = bytearray(orjson.dumps(_message(rng, msg_id)))
    for _ in range(rng.randrange(1, 6)):
        at = rng.randrange(len(data))
        action = rng.randrange(3)
        if action == 0:
            data[at] = rng.randrange(256)
        elif action == 1:
            data.insert(at, rng.randrange(256))
        elif len(data) > 1:
            del data[at]
    try:
        document = orjson.loads(bytes(data))
    except orjson.JSONDecodeError:
        return bytes(data)
    return orjson.dumps({"schema": "ehl.mutated/0", "was": document})


def _deep(rng: random.Random, msg_id: str) -> bytes:
    """Nesting past what orjson serialises (254) and up to past what it parses (1024)."""
    depth = rng.choice([100, 255, 300, 1000, 1025, 5000])
    nested = b"[" * depth + b"]" * depth
    where = rng.choice(["readings", "extra", "value"])
    head = b'{"schema": "ehl.readings/1", "msg_id": "' + msg_id.encode()
    head += b'", "sent_at": "2026-03-11T07:00:00+00:00", '
    if where == "readings":
        return head + b'"readings": [' + nested + b"]}"
    if where == "extra":
        return head + b'"readings": [1], "x": ' + nested + b"}"
    reading = b'{"seq": 1, "metric": "spo2", "unit": "%", "at": "2026-03-10T07:00:00Z", "value": '
    return head + b'"readings": [' + reading + nested + b"}]}"


def _oversized(rng: random.Random, msg_id: str) -> bytes:
    """Just past the contract's 64 KiB, or a few times it: refused whole for its size."""
    size = rng.choice([MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES * 2, MAX_PAYLOAD_BYTES * 4])
    message = _message(rng, msg_id)
    message["note"] = ""  # ',"note":""' added: the padding brings it to `size` exactly
    message["note"] = "x" * (size - len(orjson.dumps(message)))
    payload = orjson.dumps(message)
    assert len(payload) == size > MAX_PAYLOAD_BYTES
    return payload


#: the kinds of damage, with how often each is drawn (oversized ones are rarer: they are heavy)
KINDS: dict[str, tuple[Callable[[random.Random, str], bytes], int]] = {
    "broken reading": (_broken_reading, 30),
    "broken envelope": (_broken_envelope, 25),
    "not JSON": (_not_json, 20),
    "byte mutation": (_mutated, 15),
    "deep nesting": (_deep, 6),
    "oversized": (_oversized, 2),
}


def hostile_messages(seed: int, count: int) -> list[tuple[str, str, bytes]]:
    """`count` hostile messages from `seed`: (kind, msg_id it would carry, payload)."""
    rng = random.Random(seed)
    names = list(KINDS)
    weights = [KINDS[name][1] for name in names]
    made = []
    for n in range(count):
        kind = rng.choices(names, weights)[0]
        msg_id = f"hostile-{seed}-{n}"
        made.append((kind, msg_id, KINDS[kind][0](rng, msg_id)))
    return made
