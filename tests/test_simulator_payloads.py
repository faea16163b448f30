"""Device simulators' payloads, pure, against the contract's own validator: the device clock
(offset, drift, zone), readings of every device type at the device's resolution, and the
faults a simulator injects, each refused for its own reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simulator_fixtures import T0, TYPICAL

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.messages import ReasonCode
from ehealthlab.contract.validation import validate_message
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.faults import (
    EXPECTED_REASON,
    FaultMode,
    FaultShares,
    apply_fault,
    choose_fault,
    resent_msg_id,
)
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.simulators.payloads import (
    RESOLUTION,
    DeviceClock,
    ReadingsBuilder,
    device_value,
    encode,
    readings_message,
)

# -- the device clock -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "true_time", "shown"),
    [
        (DeviceClock(), T0, "2026-11-25T07:00:00+00:00"),
        (DeviceClock(), T0 + timedelta(seconds=1.9), "2026-11-25T07:00:01+00:00"),
        # local time written as UTC: an hour ahead in winter
        (DeviceClock(offset_s=3600), T0, "2026-11-25T08:00:00+00:00"),
        # a clock reset to its factory date after a battery change
        (DeviceClock(offset_s=-2 * 86400), T0, "2026-11-23T07:00:00+00:00"),
        # 50 ppm fast for 30 days: 129.6 s ahead
        (
            DeviceClock(drift_ppm=50, set_at=T0 - timedelta(days=30)),
            T0,
            "2026-11-25T07:02:09+00:00",
        ),
        (
            DeviceClock(offset_s=-10, drift_ppm=-20, set_at=T0 - timedelta(days=10)),
            T0,
            "2026-11-25T06:59:32+00:00",
        ),
    ],
)
def test_the_device_clock_shows_offset_and_drift(clock, true_time, shown):
    assert clock.read(true_time).isoformat() == shown


def test_a_clock_writes_in_its_zone_the_same_moment():
    rome = DeviceClock(zone=ZoneInfo("Europe/Rome"))
    assert rome.read(T0).isoformat() == "2026-11-25T08:00:00+01:00"
    assert rome.read(T0) == T0


@pytest.mark.parametrize(
    "kwargs",
    [{"drift_ppm": 20}, {"offset_s": float("nan")}, {"set_at": datetime(2026, 1, 1)}],
)
def test_a_clock_that_cannot_be_read_is_refused(kwargs):
    with pytest.raises(InvalidInputError):
        DeviceClock(**kwargs)


@given(
    offset=st.floats(-1e6, 1e6),
    drift=st.floats(-500, 500),
    since=st.integers(0, 400 * 86400),
)
def test_the_clock_error_is_offset_plus_drift_to_the_second(offset, drift, since):
    clock = DeviceClock(offset_s=offset, drift_ppm=drift, set_at=T0)
    true_time = T0 + timedelta(seconds=since)
    expected = true_time + timedelta(seconds=offset + drift * 1e-6 * since)
    assert abs((clock.read(true_time) - expected).total_seconds()) < 1.0


# -- readings of every device type ------------------------------------------------------------


def judge(builder: ReadingsBuilder, payload: bytes, received_at: datetime):
    return validate_message(payload, device_type=builder.device_type, received_at=received_at)


@pytest.mark.parametrize(("device_type", "units", "values", "stored"), TYPICAL)
def test_each_device_type_writes_readings_the_contract_accepts(device_type, units, values, stored):
    builder = ReadingsBuilder(device_type, units=units)
    readings = builder.readings(Measurement(T0, values), first_seq=41)
    assert [r["seq"] for r in readings] == list(range(41, 41 + len(values)))
    assert {r["at"] for r in readings} == {"2026-11-25T07:00:00+00:00"}
    payload = encode(readings_message("m1", builder.sent_at(T0), readings))
    outcome = judge(builder, payload, T0 + timedelta(seconds=2))
    assert outcome.rejected == ()
    assert {r.metric: r.value for r in outcome.accepted} == pytest.approx(stored)


def test_a_failed_measurement_is_left_out_and_a_foreign_metric_refused():
    builder = ReadingsBuilder("blood_pressure_monitor")
    readings = builder.readings(
        Measurement(T0, {"bp_systolic": 130.0, "heart_rate": float("nan")}), first_seq=1
    )
    assert [(r["seq"], r["metric"]) for r in readings] == [(1, "bp_systolic")]
    with pytest.raises(InvalidInputError, match="spo2"):
        builder.readings(Measurement(T0, {"spo2": 97.0}), first_seq=1)
    with pytest.raises(InvalidInputError):
        ReadingsBuilder("glucometer", units={"blood_glucose": "mmol/l"})


@pytest.mark.parametrize(
    ("metric", "canonical", "unit", "shown"),
    [
        ("heart_rate", 71.5, "/min", 72),
        ("body_weight", 70.35, "g", 70400),
        ("body_weight", 70.0, "[lb_av]", 154.4),
        ("body_temperature", 37.0, "[degF]", 98.6),
        ("blood_glucose", 100.0, "mmol/L", 5.6),
        ("bp_systolic", 120.0, "kPa", 16.0),
    ],
)
def test_values_are_shown_at_the_device_resolution(metric, canonical, unit, shown):
    value = device_value(metric, canonical, unit)
    assert value == shown
    assert isinstance(value, int) == (RESOLUTION[unit] >= 1)


@st.composite
def measurements(draw):
    """A device type, the units it is set to, and a measurement inside plausible ranges (2
    canonical units from each bound: a value on the bound may round outside it)."""
    code = draw(st.sampled_from(sorted(DEVICE_TYPES)))
    metrics = draw(st.sets(st.sampled_from(sorted(DEVICE_TYPES[code].metrics)), min_size=1))
    units = {m: draw(st.sampled_from(METRICS[m].accepted_units)) for m in metrics}
    values = {m: draw(st.floats(METRICS[m].minimum + 2, METRICS[m].maximum - 2)) for m in metrics}
    taken_at = draw(
        st.datetimes(datetime(2025, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC))
    )
    offset = draw(st.floats(-100, 100))
    return ReadingsBuilder(code, DeviceClock(offset_s=offset), units), Measurement(taken_at, values)


@given(measurements(), st.integers(0, 2**62))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_plausible_measurement_is_accepted_within_the_display_resolution(case, first_seq):
    builder, measurement = case
    readings = builder.readings(measurement, first_seq)
    received = measurement.taken_at + timedelta(seconds=30)
    payload = encode(readings_message("m", builder.sent_at(received), readings))
    outcome = judge(builder, payload, received)
    assert outcome.rejected == ()
    assert not outcome.clock_corrected
    for reading in outcome.accepted:
        conversion = METRICS[reading.metric].conversions[reading.reported_unit]
        step = RESOLUTION[reading.reported_unit] * conversion.numerator / conversion.denominator
        assert reading.value == pytest.approx(
            measurement.values[reading.metric], abs=step / 2 + 1e-6
        )
        assert reading.seq == first_seq + reading.index


# -- faults -----------------------------------------------------------------------------------


def cuff_message(msg_id: str = "s1-3") -> dict:
    builder = ReadingsBuilder("blood_pressure_monitor")
    values = {"bp_systolic": 130.0, "bp_diastolic": 85.0, "heart_rate": 70.0}
    readings = builder.readings(Measurement(T0, values), first_seq=1)
    return readings_message(msg_id, builder.sent_at(T0), readings)


@pytest.mark.parametrize(
    ("mode", "reasons"),
    [
        (None, []),
        (FaultMode.WRONG_UNITS, ["unit_mismatch"] * 3),
        (FaultMode.MISSING_SEQ, ["schema_violation"] * 3),
        (FaultMode.MALFORMED_JSON, ["malformed_json"]),
        (FaultMode.DUPLICATE, []),
    ],
)
def test_each_fault_gets_the_reason_the_contract_gives(mode, reasons):
    payloads = apply_fault(mode, cuff_message())
    outcomes = [validate_message(p, device_type="blood_pressure_monitor", received_at=T0)
                for p in payloads]  # fmt: skip
    assert [r.reason for r in outcomes[0].rejected] == reasons
    if mode is not None:
        expected = EXPECTED_REASON[mode]
        assert {r.reason for r in outcomes[0].rejected} == ({expected} if expected else set())
    if mode is FaultMode.DUPLICATE:
        first, again = (orjson.loads(p) for p in payloads)
        assert again["readings"] == first["readings"]
        assert again["msg_id"] == resent_msg_id(first["msg_id"]) != first["msg_id"]
    else:
        assert len(payloads) == 1


@given(measurements(), st.sampled_from(list(FaultMode)))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_any_faulty_message_is_refused_for_its_fault_alone(case, mode):
    builder, measurement = case
    readings = builder.readings(measurement, 1)
    received = measurement.taken_at + timedelta(seconds=30)
    message = readings_message("s1", builder.sent_at(received), readings)
    outcomes = [judge(builder, p, received) for p in apply_fault(mode, message)]
    expected = EXPECTED_REASON[mode]
    for outcome in outcomes:
        reasons = [r.reason for r in outcome.rejected]
        if expected is None:
            assert reasons == []
            assert len(outcome.accepted) == len(readings)
        elif expected is ReasonCode.MALFORMED_JSON:
            assert reasons == [expected]
        else:  # every reading spoilt, each refused on its own
            assert reasons == [expected] * len(readings)
            assert outcome.accepted == ()


def test_fault_shares_are_kept_and_reproducible():
    shares = FaultShares(wrong_units=0.1, missing_seq=0.2, malformed_json=0.05, duplicate=0.15,
                         seed=7)  # fmt: skip
    drawn = [choose_fault(shares, f"s{i}-{i}") for i in range(20_000)]
    for mode, share in shares.by_mode().items():
        assert drawn.count(mode) / len(drawn) == pytest.approx(share, abs=0.015)
    assert drawn.count(None) / len(drawn) == pytest.approx(0.5, abs=0.015)
    assert drawn == [choose_fault(shares, f"s{i}-{i}") for i in range(20_000)]
    other_seed = FaultShares(wrong_units=0.1, missing_seq=0.2, malformed_json=0.05,
                             duplicate=0.15, seed=8)  # fmt: skip
    assert drawn != [choose_fault(other_seed, f"s{i}-{i}") for i in range(20_000)]
    assert {choose_fault(FaultShares(), f"s{i}") for i in range(1000)} == {None}


@pytest.mark.parametrize(
    "kwargs", [{"wrong_units": 0.6, "duplicate": 0.6}, {"missing_seq": -0.1}, {"duplicate": 2}]
)
def test_impossible_fault_shares_are_refused(kwargs):
    with pytest.raises(InvalidInputError):
        FaultShares(**kwargs)
