"""How fast stored readings become FHIR JSON: validated R4B models against the fast path.

Run: .venv/bin/python bench/fhir_mapping.py [READINGS]

Maps READINGS (default 10,000) readings of a day of the pilot - blood-pressure cuffs (systolic,
diastolic and pulse of one inflation: a panel and a heart rate), pulse oximeters and scales,
most attributed to a patient, some clock-corrected - to Observations and their JSON bytes:
- models: ehealthlab.fhir.mapping.r4b (fhir.resources R4B, validated), then model_dump_json();
- fast: ehealthlab.fhir.mapping.fast (plain dicts), then orjson.
Prints the time of each step and Observations per second; the best of three runs counts.
Figures depend on the machine; compare the rows of one run.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from ehealthlab.fhir.mapping import fast, r4b
from ehealthlab.fhir.mapping.rows import ReadingRecord, group_measurements

START = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
T = TypeVar("T")


def day_of_readings(count: int, rng: random.Random) -> list[ReadingRecord]:
    """`count` readings from 200 devices, one measurement every few minutes."""
    kinds = [
        ("bpm", "blood_pressure_monitor", (("bp_systolic", 90, 180), ("bp_diastolic", 50, 110),
                                           ("heart_rate", 45, 120))),
        ("oxi", "pulse_oximeter", (("spo2", 88, 100), ("heart_rate", 45, 120))),
        ("scale", "weighing_scale", (("body_weight", 40, 150),)),
    ]  # fmt: skip
    readings: list[ReadingRecord] = []
    moment = START
    while len(readings) < count:
        prefix, device_type, metrics = rng.choice(kinds)
        device_id = f"{prefix}-{rng.randrange(200):016x}"
        moment += timedelta(seconds=rng.randrange(1, 30))
        attributed = rng.random() < 0.9
        corrected = rng.random() < 0.05
        measured = moment + timedelta(hours=3) if corrected else moment
        for metric, low, high in metrics:
            readings.append(
                ReadingRecord(
                    device_id=device_id,
                    device_type=device_type,
                    metric=metric,
                    at=moment,
                    value=float(rng.randint(low, high)),
                    measured_at=measured,
                    received_at=measured + timedelta(seconds=rng.randrange(1, 600)),
                    clock_corrected=corrected,
                    patient_id=uuid.UUID(int=rng.getrandbits(128)) if attributed else None,
                    provider_id=uuid.UUID(int=rng.getrandbits(128)) if attributed else None,
                )
            )
    return readings[:count]


def best_of(runs: int, step: Callable[[], T]) -> tuple[float, T]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        result = step()
        timings.append(time.perf_counter() - started)
    return min(timings), result


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 10_000
    readings = day_of_readings(count, random.Random(6))
    observations = len(group_measurements(readings))
    print(f"{count} readings -> {observations} Observations (best of 3 runs)")
    print(f"{'path':<34}{'seconds':>10}{'Observations/s':>18}")

    def report(name: str, seconds: float) -> None:
        print(f"{name:<34}{seconds:>10.3f}{observations / seconds:>18,.0f}")

    build, models = best_of(3, lambda: r4b.observations(readings))
    dump, _ = best_of(3, lambda: [m.model_dump_json() for m in models])
    report("models: build and validate", build)
    report("models: model_dump_json", dump)
    report("models: total", build + dump)

    build, documents = best_of(3, lambda: fast.observations_json(readings))
    dump, _ = best_of(3, lambda: [fast.dumps(d) for d in documents])
    report("fast: dicts", build)
    report("fast: orjson", dump)
    report("fast: total", build + dump)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
