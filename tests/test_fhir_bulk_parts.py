"""FHIR Bulk Data export, pure parts: the kick-off's parameters, `_since` instants and the
Prefer header, file names and the manifest, the export queries by scope; and the streaming
pairing of observations_ndjson, equal to the fast path's (generated) and one panel at a
time."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir_bulk_fixtures import T0
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.bulk import store
from ehealthlab.fhir.bulk.export import (
    LEVEL_TYPES,
    ExportFile,
    UnsupportedError,
    file_name,
    is_file_name,
    manifest,
    observations_ndjson,
    parse_kickoff,
    prefers_async,
    progress,
)
from ehealthlab.fhir.bulk.store import ExportScope
from ehealthlab.fhir.mapping.fast import dumps, observations_json
from ehealthlab.fhir.mapping.rows import ReadingRecord

# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "params", "prefer", "types", "ignored"),
    [
        ("system", [], None, LEVEL_TYPES["system"], ()),
        ("system", [("_type", "Observation, Patient")], None, ("Patient", "Observation"), ()),
        (
            "group",
            [("_type", "Patient"), ("_type", "Patient,Device")],
            None,
            ("Device", "Patient"),
            (),
        ),
        (
            "patient",
            [("_outputFormat", "application/fhir+ndjson")],
            None,
            LEVEL_TYPES["patient"],
            (),
        ),
        (
            "system",
            [("_elements", "id"), ("patient", "x"), ("_elements", "y")],
            "respond-async; handling=lenient",
            LEVEL_TYPES["system"],
            ("_elements", "patient"),
        ),
    ],
)
def test_kick_off_parameters(level, params, prefer, types, ignored):
    asked = parse_kickoff(level, params, prefer=prefer)
    assert asked.types == types and asked.ignored == ignored and asked.since is None


@pytest.mark.parametrize(
    ("level", "params", "error"),
    [
        ("group", [("_type", "Location")], UnsupportedError),
        ("system", [("_type", "Binary")], UnsupportedError),
        ("system", [("_outputFormat", "application/fhir+json")], UnsupportedError),
        ("system", [("_typeFilter", "x")], UnsupportedError),
        ("system", [("_since", "2026-01-01T00:00:00")], InvalidInputError),
        ("system", [("foo", "bar")], InvalidInputError),
    ],
)
def test_kick_off_parameters_refused(level, params, error):
    with pytest.raises(error):
        parse_kickoff(level, params)


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T11:00:00+01:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T11:00:00 01:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T09:00:00.5-01:00", datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_since_instants(text, instant):
    assert parse_kickoff("system", [("_since", text)]).since == instant


@pytest.mark.parametrize(
    ("prefer", "wanted"),
    [
        (None, True),
        ("respond-async", True),
        ("respond-async, handling=lenient", True),
        ("handling=strict", True),
        ("respond-sync", False),
        ("wait=10, respond-sync", False),
    ],
)
def test_prefer_header(prefer, wanted):
    assert prefers_async(prefer) is wanted


def test_file_names_and_manifest():
    assert file_name("Observation", 1) == "Observation.1.ndjson"
    assert is_file_name("Patient.12.ndjson")
    for bad in (
        "../Patient.1.ndjson",
        "Patient.0.ndjson",
        "Patient.1.json",
        "Binary.1.ndjson",
        "Patient.1.ndjson/x",
        "Patient.01.ndjson",
    ):
        assert not is_file_name(bad)
    with pytest.raises(ValueError, match="no export file"):
        file_name("Binary", 1)
    files = [
        ExportFile("Patient", "Patient.1.ndjson", 3),
        ExportFile("OperationOutcome", "OperationOutcome.1.ndjson", 1),
    ]
    got = manifest(
        transaction_time=datetime(2026, 3, 1, 11, tzinfo=timezone(timedelta(hours=1))),
        request_url="https://x/fhir/$export",
        files=files,
        file_url=lambda name: f"https://x/files/{name}",
    )
    assert got == {
        "transactionTime": "2026-03-01T10:00:00Z",
        "request": "https://x/fhir/$export",
        "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": "https://x/files/Patient.1.ndjson", "count": 3}],
        "error": [
            {
                "type": "OperationOutcome",
                "url": "https://x/files/OperationOutcome.1.ndjson",
                "count": 1,
            }
        ],
    }
    assert progress("queued", 0) == "queued"
    assert len(progress("running", 10**15)) < 100


def test_export_queries_select_by_scope():
    """The provider filter appears exactly where a scope has a provider."""
    p = uuid.uuid4()
    for resource_type, query in store.QUERIES.items():
        for scope in (ExportScope(None, False), ExportScope(None, True), ExportScope(p, True)):
            text = repr(query(scope, None))
            assert ("%(provider)s" in text) == (
                scope.provider_id is not None and resource_type != "Location"
            ), (resource_type, scope)


# -- observations_ndjson: the streaming pairing equals the fast path's -------------------------

DEVICES = [
    ("bpm-0000000000000001", "blood_pressure_monitor"),
    ("bpm-0000000000000002", "blood_pressure_monitor"),
    ("mpm-0000000000000003", "multiparameter_monitor"),
]
METRICS_OF = {
    "blood_pressure_monitor": ["bp_systolic", "bp_diastolic", "heart_rate"],
    "multiparameter_monitor": ["bp_systolic", "bp_diastolic", "spo2", "steps"],
}


@st.composite
def sorted_readings(draw) -> list[ReadingRecord]:
    """Readings of a few devices at a few times (at most one per device, metric and time, as
    the store's key says), sorted by device and time in any metric order."""
    keys = draw(
        st.sets(
            st.tuples(
                st.sampled_from(DEVICES),
                st.integers(0, 4),
                st.sampled_from(sorted({m for ms in METRICS_OF.values() for m in ms})),
            ),
            max_size=30,
        )
    )
    records = []
    for (device_id, device_type), minute, metric in keys:
        if metric not in METRICS_OF[device_type]:
            continue
        at = T0 + timedelta(minutes=minute)
        records.append(
            ReadingRecord(device_id, device_type, metric, at, 100.0, at, at, False, None, None)
        )
    shuffled = draw(st.permutations(records))
    return sorted(shuffled, key=lambda r: (r.device_id, r.at))


@given(sorted_readings())
def test_streamed_observations_equal_the_fast_path(readings):
    streamed = [dumps(o) for o in observations_ndjson(iter(readings))]
    assert sorted(streamed) == sorted(dumps(o) for o in observations_json(readings))


def test_streamed_observations_hold_one_panel_at_a_time():
    """A generator: it gives the first Observation before reading the whole input."""

    def endless() -> Iterator[ReadingRecord]:
        minute = 0
        while True:
            at = T0 + timedelta(minutes=minute)
            for metric in ("bp_diastolic", "bp_systolic", "heart_rate"):
                yield ReadingRecord(
                    DEVICES[0][0], DEVICES[0][1], metric, at, 80.0, at, at, False, None, None
                )
            minute += 1

    first = list(_take(observations_ndjson(endless()), 5))
    assert len(first) == 5


def _take(items: Iterable[Any], n: int) -> Iterator[Any]:
    for count, item in enumerate(items):
        if count == n:
            return
        yield item
