"""The pure mapping of `POST /fhir` Bundles: Observations become contract readings, what
cannot be a reading is a fault with a reason, large Bundles are cut into contract-sized
messages, message ids come from the Bundle's identifier, and reading any Bundle raises
nothing but BundleError."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest
from fhir_bundles import LOINC, MDC, bundle, coding, mangled_bundles, observation, panel
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.contract.messages import MAX_READINGS, ReasonCode
from ehealthlab.contract.validation import validate_message
from ehealthlab.fhir.transaction.bundle import MAX_ENTRIES, BundleError, read_bundle
from ehealthlab.fhir.transaction.entry import READING_SEQ_SYSTEM
from ehealthlab.fhir.transaction.messages import contract_messages, message_id_base

# -- the pure mapping ----------------------------------------------------------------------------

D = "bpm-0000000000000001"
AT = "2026-03-01T08:00:00+01:00"


@pytest.mark.parametrize(
    ("resource", "items"),
    [
        (
            observation(D, 5, AT, metric="heart_rate", value=72, unit="/min"),
            [{"seq": 5, "metric": "heart_rate", "value": 72, "unit": "/min", "at": AT}],
        ),
        (
            observation(D, 5, AT, metric="body_weight", value=80.25, unit="[lb_av]"),
            [{"seq": 5, "metric": "body_weight", "value": 80.25, "unit": "[lb_av]", "at": AT}],
        ),
        (
            observation(
                D,
                7,
                AT,
                metric="spo2",
                value=97,
                unit="%",
                code={
                    "coding": [
                        {"system": MDC, "code": "150456"},
                        {"system": LOINC, "code": "2708-6"},
                    ]
                },
            ),
            [{"seq": 7, "metric": "spo2", "value": 97, "unit": "%", "at": AT}],
        ),
        (
            panel(D, 9, AT, 120, 80),
            [
                {"seq": 9, "metric": "bp_systolic", "value": 120, "unit": "mm[Hg]", "at": AT},
                {"seq": 10, "metric": "bp_diastolic", "value": 80, "unit": "mm[Hg]", "at": AT},
            ],
        ),
        (
            panel(D, 9, AT, 120, 80, code={"coding": [{"system": MDC, "code": "150020"}]}),
            [
                {"seq": 9, "metric": "bp_systolic", "value": 120, "unit": "mm[Hg]", "at": AT},
                {"seq": 10, "metric": "bp_diastolic", "value": 80, "unit": "mm[Hg]", "at": AT},
            ],
        ),
        (
            {
                **observation(
                    D, 5, AT, metric="heart_rate", value=72, unit="/min", effectiveInstant=AT
                ),
                "effectiveDateTime": None,
            },
            [{"seq": 5, "metric": "heart_rate", "value": 72, "unit": "/min", "at": AT}],
        ),
    ],
)
def test_observations_become_contract_readings(resource, items):
    resource = {k: v for k, v in resource.items() if v is not None}
    plan = read_bundle(orjson.dumps(bundle(resource)))
    [entry] = plan.entries
    assert entry.refusal is None and entry.faults == ()
    assert [draft.item for draft in entry.drafts] == items


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": "-1"}]}, "schema_violation"),
        # more digits than int() takes: refused, not a crash
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": "9" * 5000}]}, "schema_violation"),
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": str(2**63)}]}, "schema_violation"),
        (
            {
                "identifier": [
                    {"system": READING_SEQ_SYSTEM, "value": "1"},
                    {"system": READING_SEQ_SYSTEM, "value": "2"},
                ]
            },
            "schema_violation",
        ),
        ({"identifier": [{"system": READING_SEQ_SYSTEM, "value": str(2**63)}]}, "schema_violation"),
        (
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8867-4"},
                        {"system": LOINC, "code": "2708-6"},
                    ]
                }
            },
            "schema_violation",
        ),
        ({"code": {"text": "pulse"}}, "unknown_metric"),
        (
            {"valueQuantity": {"value": 72, "code": "/min", "system": "http://example.org"}},
            "unit_mismatch",
        ),
        (
            {"effectiveDateTime": None, "effectivePeriod": {"start": "2026-03-01T08:00:00Z"}},
            "schema_violation",
        ),
        ({"valueQuantity": None, "valueString": "72"}, "schema_violation"),
    ],
)
def test_what_cannot_be_a_reading_is_a_fault_with_a_reason(change, reason):
    resource = observation(D, 5, AT, metric="heart_rate", value=72, unit="/min") | change
    resource = {k: v for k, v in resource.items() if v is not None}
    [entry] = read_bundle(orjson.dumps(bundle(resource))).entries
    assert entry.drafts == () and [f.reason for f in entry.faults] == [ReasonCode(reason)]


def test_a_panel_gives_seq_and_seq_plus_one_and_skips_absent_components():
    resource = panel(D, 20, AT, 120, 80)
    resource["component"][1] = {
        "code": coding("bp_diastolic"),
        "dataAbsentReason": {"text": "cuff error"},
    }
    [entry] = read_bundle(orjson.dumps(bundle(resource))).entries
    assert [(d.metric, d.item["seq"]) for d in entry.drafts] == [("bp_systolic", 20)]
    assert any("absent" in note.diagnostics for note in entry.notes)


def test_large_bundles_are_cut_into_contract_sized_messages():
    resources = [
        observation(D, i, AT, metric="heart_rate", value=60 + i % 50, unit="/min")
        for i in range(MAX_ENTRIES)
    ]
    plan = read_bundle(orjson.dumps(bundle(*resources)))
    messages = contract_messages(plan, {D}, msg_id="m", sent_at=AT)
    assert [m.msg_id for m in messages] == ["m/1", "m/2"]
    assert sum(len(m.sources) for m in messages) == MAX_ENTRIES
    received = datetime.fromisoformat(AT)
    for message in messages:
        assert len(message.sources) <= MAX_READINGS
        outcome = validate_message(
            message.payload, device_type="blood_pressure_monitor", received_at=received
        )
        assert outcome.message_rejection is None
        assert len(outcome.accepted) == len(message.sources)


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        (None, "fallback"),
        ({"value": "bundle-42"}, "bundle-42"),
        ({"system": "urn:x", "value": "bundle-42"}, None),
        ({"value": "x" * 64}, None),
        ({"value": "a\nb"}, None),
    ],
)
def test_message_ids_come_from_the_bundle_identifier(identifier, expected):
    document = bundle() | ({"identifier": identifier} if identifier else {})
    got = message_id_base(read_bundle(orjson.dumps(document)), "fallback")
    if expected is not None:
        assert got == expected
    else:  # a stable name of the identifier, within the contract's 64 characters
        assert len(got) == 32 and got == message_id_base(
            read_bundle(orjson.dumps(document)), "other"
        )


@given(st.binary(max_size=200) | mangled_bundles())
def test_reading_a_bundle_raises_nothing_but_bundle_error(body):
    try:
        plan = read_bundle(body)
    except BundleError:
        return
    for message in contract_messages(plan, plan.device_ids(), msg_id="m", sent_at=AT):
        if message.payload:
            outcome = validate_message(
                message.payload,
                device_type="multiparameter_monitor",
                received_at=datetime.fromisoformat(AT),
            )
            assert outcome.message_rejection is None
