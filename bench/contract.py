"""How fast the device contract validates readings, next to what parsing alone costs.

Run: .venv/bin/python bench/contract.py

Prints readings per second for messages of 500 readings and of 1 reading, for:
- orjson.loads of the same payloads (the baseline: nothing can be faster than parsing),
- validate_message (what ingest calls),
- pydantic's ReadingsMessage.model_validate_json (the models: shape only),
- the models followed by the same catalogue and clock checks: the design validate_message
  was measured against.
Figures depend on the machine; compare the columns of one run, not runs on two machines.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from ehealthlab.contract import (
    CLOCK_TOLERANCE_S,
    DEVICE_TYPES,
    FUTURE_TOLERANCE,
    METRICS,
    ReadingsMessage,
    ValidReading,
    validate_message,
)

RECEIVED_AT = datetime(2026, 11, 25, 7, 30, tzinfo=UTC)
_METRICS = (
    ("bp_systolic", "mm[Hg]", 90, 180),
    ("bp_diastolic", "mm[Hg]", 50, 110),
    ("heart_rate", "/min", 45, 140),
    ("spo2", "%", 88, 100),
    ("body_weight", "kg", 40, 150),
    ("body_temperature", "Cel", 35.5, 39.5),
)


def make_payload(readings: int, rng: random.Random) -> bytes:
    """A valid message from a multiparameter monitor: measurements of three readings
    sharing `at`, one minute apart, ending just before the receive time."""
    start = RECEIVED_AT - timedelta(minutes=readings)
    items = []
    for seq in range(readings):
        metric, unit, low, high = _METRICS[seq % len(_METRICS)]
        at = start + timedelta(minutes=seq // 3)
        items.append(
            {
                "seq": 1000 + seq,
                "metric": metric,
                "value": round(rng.uniform(low, high), 1),
                "unit": unit,
                "at": at.isoformat(),
            }
        )
    return orjson.dumps(
        {
            "schema": "ehl.readings/1",
            "msg_id": f"bench-{readings}",
            "sent_at": (RECEIVED_AT - timedelta(seconds=1)).isoformat(),
            "readings": items,
        }
    )


def readings_per_second(run: Callable[[bytes], object], payload: bytes, readings: int) -> float:
    """Best of five timed rounds of at least 0.2 s each, in readings per second."""
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            run(payload)
        elapsed = time.perf_counter() - started
        if elapsed >= 0.2:
            break
        calls *= 2
    best = elapsed
    for _ in range(4):
        started = time.perf_counter()
        for _ in range(calls):
            run(payload)
        best = min(best, time.perf_counter() - started)
    return calls * readings / best


def validate(payload: bytes) -> object:
    outcome = validate_message(
        payload, device_type="multiparameter_monitor", received_at=RECEIVED_AT
    )
    assert outcome.message_rejection is None and not outcome.rejected
    return outcome


def models_then_catalogue(payload: bytes) -> list[ValidReading]:
    """The alternative design: pydantic for the shape, then the catalogue and the clock."""
    message = ReadingsMessage.model_validate_json(payload)
    measured = DEVICE_TYPES["multiparameter_monitor"].metrics
    offset = RECEIVED_AT - message.sent_at
    corrected = abs(offset.total_seconds()) > CLOCK_TOLERANCE_S
    latest = RECEIVED_AT + FUTURE_TOLERANCE
    accepted = []
    for index, item in enumerate(message.readings):
        entry = METRICS.get(item.metric)
        if entry is None or item.metric not in measured:
            continue
        conversion = entry.conversions.get(item.unit)
        if conversion is None:
            continue
        value = conversion.to_canonical(item.value)
        measured_at = item.at + offset if corrected else item.at
        if not entry.minimum <= value <= entry.maximum or measured_at > latest:
            continue
        accepted.append(
            ValidReading(
                index, item.seq, item.metric, value, entry.unit, item.value, item.unit,
                item.at, measured_at, corrected,
            )
        )  # fmt: skip
    assert len(accepted) == len(message.readings)
    return accepted


def main() -> int:
    rng = random.Random(20261125)
    candidates: dict[str, Callable[[bytes], object]] = {
        "orjson.loads (baseline)": orjson.loads,
        "validate_message": validate,
        "ReadingsMessage.model_validate_json": ReadingsMessage.model_validate_json,
        "models, then catalogue checks": models_then_catalogue,
    }
    sizes = (500, 1)
    payloads = {size: make_payload(size, rng) for size in sizes}
    header = f"{'readings/s':<38}" + "".join(f"{f'{size}-reading msg':>18}" for size in sizes)
    print(header)
    print("-" * len(header))
    for name, run in candidates.items():
        figures = [readings_per_second(run, payloads[size], size) for size in sizes]
        print(f"{name:<38}" + "".join(f"{figure:>18,.0f}" for figure in figures))
    print(f"\npayload sizes: {', '.join(f'{s}: {len(p):,} bytes' for s, p in payloads.items())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
