"""What the tests of the FHIR mapping share: the MDC code system, fixed patient, provider,
start-up, device and moment, a reading row of any metric (`reading`) and a cuff's measurement
(`cuff_measurement`), a model as the JSON it writes (`as_json`), and the generated device ids
and moments (in any offset) with their settings (GENERATED)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.fhir.mapping.rows import ReadingRecord

MDC = "urn:iso:std:iso:11073:10101"
PATIENT = UUID("5d4d5165-e465-4760-8b8f-930046f5c3ba")
PROVIDER = UUID("e3aadc22-d0b2-4b52-b7fc-ea47afb466d5")
STARTUP = UUID("0b6f0a43-53a3-4c1c-9f53-2e8d1d5c2a10")
DEVICE = "bpm-9e5ccae6b9b8242b"
AT = datetime(2026, 11, 25, 8, 0, 30, tzinfo=timezone(timedelta(hours=1)))
GENERATED = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def codings(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


def reading(metric: str, value: float, **changes: Any) -> ReadingRecord:
    device_type = (
        "blood_pressure_monitor"
        if metric in DEVICE_TYPES["blood_pressure_monitor"].metrics
        else "multiparameter_monitor"
    )
    base = ReadingRecord(
        device_id=DEVICE,
        device_type=device_type,
        metric=metric,
        at=AT,
        value=value,
        measured_at=AT,
        received_at=AT + timedelta(seconds=38),
        clock_corrected=False,
        patient_id=PATIENT,
        provider_id=PROVIDER,
    )
    return base._replace(**changes)


def cuff_measurement(**changes: Any) -> list[ReadingRecord]:
    return [
        reading("bp_systolic", 142.0, **changes),
        reading("bp_diastolic", 91.0, **changes),
        reading("heart_rate", 72.0, **changes),
    ]


def as_json(model: Any) -> dict[str, Any]:
    return json.loads(model.model_dump_json())


device_ids = st.one_of(
    st.builds(
        lambda prefix, number: f"{prefix}-{number:016x}",
        st.sampled_from(["bpm", "oxi", "scale", "temp", "gluco", "act", "multi"]),
        st.integers(0, 2**64 - 1),
    ),
    st.from_regex(r"[a-z0-9][a-z0-9-]{2,21}", fullmatch=True),
)
offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60)
)
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)
