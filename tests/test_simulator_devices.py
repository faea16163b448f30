"""Device simulators: pure payloads and faults against the contract's own validator, the
disk buffer on its own, then simulated devices of every type against a real broker, a real
ingest worker and a real store (outages, a SIGKILLed simulator, bad clocks, faults, a
5,000-message backlog, battery death and the Last Will)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from api_fixtures import template_copy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_fixtures import Pilot, RunningWorker

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.messages import MAX_PAYLOAD_BYTES, ReasonCode
from ehealthlab.contract.topics import status_topic
from ehealthlab.contract.validation import validate_message
from ehealthlab.errors import InvalidInputError
from ehealthlab.mqtt import MqttConnection
from ehealthlab.simulators.battery import Battery
from ehealthlab.simulators.buffer import StoreAndForward
from ehealthlab.simulators.device import Device
from ehealthlab.simulators.device_config import DeviceConfig, DeviceRegistration
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
    fits,
    readings_message,
)
from ehealthlab.stack.ports import free_port

T0 = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)

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

#: (device type, units it is set to, true values, what the store must hold in canonical units)
TYPICAL = [
    ("blood_pressure_monitor", {}, {"bp_systolic": 142.4, "bp_diastolic": 91.2,
     "heart_rate": 72.0}, {"bp_systolic": 142, "bp_diastolic": 91, "heart_rate": 72}),
    ("pulse_oximeter", {}, {"spo2": 96.6, "heart_rate": 80.4}, {"spo2": 97, "heart_rate": 80}),
    ("weighing_scale", {}, {"body_weight": 81.26}, {"body_weight": 81.3}),
    ("thermometer", {}, {"body_temperature": 37.84}, {"body_temperature": 37.8}),
    ("glucometer", {}, {"blood_glucose": 131.6}, {"blood_glucose": 132}),
    ("activity_tracker", {}, {"steps": 4321.0, "heart_rate": 64.2, "respiratory_rate": 15.4},
     {"steps": 4321, "heart_rate": 64, "respiratory_rate": 15}),
    ("multiparameter_monitor", {}, {"bp_systolic": 120.0, "spo2": 98.0, "body_weight": 70.0,
     "blood_glucose": 95.0, "body_temperature": 36.6, "steps": 10.0},
     {"bp_systolic": 120, "spo2": 98, "body_weight": 70, "blood_glucose": 95,
      "body_temperature": 36.6, "steps": 10}),
    # devices set to another accepted unit: the platform converts
    ("glucometer", {"blood_glucose": "mmol/L"}, {"blood_glucose": 131.6},
     {"blood_glucose": 7.3 * 18.016}),
    ("weighing_scale", {"body_weight": "[lb_av]"}, {"body_weight": 81.26},
     {"body_weight": 179.2 * 0.45359237}),
    ("thermometer", {"body_temperature": "[degF]"}, {"body_temperature": 37.84},
     {"body_temperature": (100.1 - 32) * 5 / 9}),
    ("blood_pressure_monitor", {"bp_systolic": "kPa", "bp_diastolic": "kPa"},
     {"bp_systolic": 142.4, "bp_diastolic": 91.2}, {"bp_systolic": 19.0 * 7.50062,
     "bp_diastolic": 12.2 * 7.50062}),
]  # fmt: skip


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


# -- the disk buffer --------------------------------------------------------------------------


def thermometer_readings(temperature: float = 36.6, at: datetime = T0):
    builder = ReadingsBuilder("thermometer")
    return lambda first: builder.readings(Measurement(at, {"body_temperature": temperature}), first)


def cuff_readings(at: datetime = T0):
    builder = ReadingsBuilder("blood_pressure_monitor")
    values = {"bp_systolic": 130.0, "bp_diastolic": 85.0, "heart_rate": 70.0}
    return lambda first: builder.readings(Measurement(at, values), first)


#: what a pump passes on: the device clock's sent_at, and the true time it sends at
SEND = {"sent_at": "2026-11-25T07:00:00+00:00"}


def test_the_buffer_keeps_seq_and_readings_across_a_reopen(tmp_path):
    buffer = StoreAndForward(tmp_path, "dev-1")
    for i in range(3):
        buffer.append(cuff_readings(T0 + timedelta(minutes=i)))
    again = StoreAndForward(tmp_path, "dev-1")
    assert again.next_seq == 10
    assert again.pending_seqs() == list(range(1, 10))
    with pytest.raises(InvalidInputError, match="dev-1"):
        StoreAndForward(tmp_path, "dev-2")


def test_readings_that_do_not_follow_seq_are_not_kept(tmp_path):
    buffer = StoreAndForward(tmp_path, "dev-1")
    with pytest.raises(InvalidInputError):
        buffer.append(lambda first: [{"seq": first + 1}])
    assert (buffer.next_seq, buffer.pending_readings()) == (1, 0)


def test_a_formed_message_keeps_its_msg_id_and_readings_until_acknowledged(tmp_path):
    buffer = StoreAndForward(tmp_path, "dev-1")
    for i in range(4):
        buffer.append(cuff_readings(T0 + timedelta(minutes=i)))
    [first] = buffer.next_batches(0, 1, max_readings=6, **SEND)
    assert (first.msg_id, len(first.readings)) == ("s1-6", 6)
    # a restart before the acknowledgement: a new object over the same file
    buffer = StoreAndForward(tmp_path, "dev-1")
    for i in range(4, 6):
        buffer.append(cuff_readings(T0 + timedelta(minutes=i)))
    batches = buffer.next_batches(0, 10, max_readings=500, **SEND)
    assert [(b.msg_id, b.first_seq, b.last_seq) for b in batches] == [
        ("s1-6", 1, 6),  # formed before: not merged with what came later
        ("s7-18", 7, 18),
    ]
    assert [r["seq"] for r in batches[1].readings] == list(range(7, 19))
    assert buffer.next_batches(6, 10, max_readings=500, **SEND)[0].msg_id == "s7-18"
    assert buffer.delivered(["s1-6", "s1-6"]) == 6
    assert buffer.pending_seqs() == list(range(7, 19))


def test_a_message_sent_again_keeps_its_msg_id_and_readings_with_a_fresh_sent_at(tmp_path):
    """Contract v1.1: an old sent_at on a resend would read as a wrong clock."""
    buffer = StoreAndForward(tmp_path, "dev-1")
    buffer.append(cuff_readings())

    def send(after: timedelta) -> tuple[str, str, list]:
        at = (T0 + after).isoformat()
        [batch] = buffer.next_batches(0, 1, max_readings=500, sent_at=at)
        return batch.msg_id, batch.sent_at, batch.readings

    first = send(timedelta(0))
    for after in (timedelta(seconds=1), timedelta(minutes=5), timedelta(days=2)):
        again = send(after)
        assert again[0] == first[0] == "s1-3"
        assert again[2] == first[2]
        assert again[1] == (T0 + after).isoformat()
    reopened = StoreAndForward(tmp_path, "dev-1")  # a restarted simulator
    [batch] = reopened.next_batches(0, 1, max_readings=500, sent_at="2026-11-26T00:00:00+00:00")
    assert (batch.msg_id, batch.readings, batch.sent_at) == (
        first[0],
        first[2],
        "2026-11-26T00:00:00+00:00",
    )


def test_a_measurement_is_never_split_across_messages(tmp_path):
    buffer = StoreAndForward(tmp_path, "dev-1")
    for i in range(5):
        buffer.append(cuff_readings(T0 + timedelta(minutes=i)))
    batches = buffer.next_batches(0, 10, max_readings=4, **SEND)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 3), (4, 6), (7, 9), (10, 12),
                                                            (13, 15)]  # fmt: skip
    one = StoreAndForward(tmp_path / "one", "dev-2")
    for i in range(2):
        one.append(cuff_readings(T0 + timedelta(minutes=i)))
    assert [len(b.readings) for b in one.next_batches(0, 10, max_readings=1, **SEND)] == [3, 3]


def test_a_backlog_goes_in_messages_within_the_contract_limits(tmp_path):
    buffer = StoreAndForward(tmp_path, "dev-1")
    buffer.set("next_seq", str(2**63 - 20_000))  # the longest seqs the contract allows
    tracker = ReadingsBuilder("activity_tracker", DeviceClock(zone=UTC))
    for i in range(1500):
        values = {"steps": 99_999.0, "heart_rate": 150.0, "respiratory_rate": 30.0}
        at = T0 + timedelta(minutes=i)
        buffer.append(lambda first, at=at, v=values: tracker.readings(Measurement(at, v), first))
    batches = buffer.next_batches(0, 100, max_readings=500, **SEND)
    assert sum(len(b.readings) for b in batches) == 4500
    assert [len(b.readings) for b in batches] == [498] * 9 + [18]  # whole measurements of 3
    largest = max(len(encode(readings_message(b.msg_id, b.sent_at, b.readings))) for b in batches)
    assert largest <= MAX_PAYLOAD_BYTES


@pytest.mark.parametrize(
    ("readings", "size", "max_readings", "ok"),
    [(500, 60_000, 500, True), (501, 100, 500, False), (10, 65_400, 500, False),
     (3, 300, 2, False), (2, 300, 2, True)],
)  # fmt: skip
def test_a_message_fits_within_500_readings_and_64_kib(readings, size, max_readings, ok):
    assert fits(readings, size, max_readings=max_readings) is ok


# -- simulated devices against the real platform ----------------------------------------------


def real_now() -> datetime:
    """The wall clock: what the platform stamps receive times with (tests run in real time,
    so the simulated `now` of a pump is the wall clock too unless a test says otherwise)."""
    return datetime.now(UTC)


class Lab:
    """A pilot (store, broker, devices) with one ingest worker, and simulated devices."""

    def __init__(self, pilot: Pilot, state: Path) -> None:
        self.pilot = pilot
        self.worker = RunningWorker(pilot.settings, f"ingest-sim-{uuid.uuid4().hex[:6]}")
        self.state = state
        self._watchers: list[MqttConnection] = []
        self._devices: list[Device] = []

    def register(self, device_type: str) -> DeviceRegistration:
        device_id, password = self.pilot.register(device_type)
        admin = self.pilot.admin
        return DeviceRegistration(device_id, device_type, admin.host, admin.port, password)

    def device(self, device_type: str, config: DeviceConfig | None = None) -> Device:
        registration = self.register(device_type)
        return self.keep(Device(registration, self.state / registration.device_id, config))

    def keep(self, device: Device) -> Device:
        self._devices.append(device)
        return device

    def watch_status(self, device_id: str) -> queue.Queue:
        """Status messages of a device as the platform sees them (retained one first)."""
        inbox: queue.Queue = queue.Queue()
        watcher = MqttConnection(self.pilot.admin, f"watch-{uuid.uuid4().hex[:8]}",
                                 on_message=inbox.put).connect()  # fmt: skip
        watcher.subscribe(status_topic(device_id))
        self._watchers.append(watcher)
        return inbox

    def readings(self, device_id: str, columns: str = "seq, metric, value"):
        return self.pilot.query(
            f"SELECT {columns} FROM readings WHERE device_id = %s ORDER BY seq",  # noqa: S608
            device_id,
        )

    def wait_for_count(self, table: str, device_id: str, expected: int, timeout: float = 30):
        sql = f"SELECT count(*) FROM {table} WHERE device_id = %s"  # noqa: S608 - our tables
        return self.pilot.wait_for(sql, [(expected,)], device_id, timeout=timeout)[0][0]

    def close(self) -> None:
        for device in self._devices:
            device.close()
        for watcher in self._watchers:
            watcher.close()
        self.worker.close()


@pytest.fixture
def lab(plain_admin_url, migrated_template, mosquitto_broker, tmp_path):
    with template_copy(plain_admin_url, migrated_template) as database_url:
        pilot = Pilot(database_url, mosquitto_broker)
        opened = Lab(pilot, tmp_path)
        try:
            yield opened
        finally:
            opened.close()
            pilot.cleanup()


def eventually(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def state(inbox: queue.Queue) -> str:
    return orjson.loads(inbox.get(timeout=15).payload)["state"]


def test_every_device_type_is_accepted_and_stored_with_its_values(lab):
    devices = []
    taken_at = real_now() - timedelta(minutes=5)
    for device_type, units, values, stored in TYPICAL:
        device = lab.device(device_type, DeviceConfig(units=units))
        taken = device.take(Measurement(taken_at, values))
        assert taken is not None and taken.seqs == range(1, len(values) + 1)
        device.drain(real_now())
        devices.append((device, stored))
    for device, stored in devices:
        assert lab.wait_for_count("readings", device.device_id, len(stored)) == len(stored)
        rows = lab.readings(device.device_id)
        assert {metric: value for _, metric, value in rows} == pytest.approx(stored)
        assert [seq for seq, _, _ in rows] == list(range(1, len(stored) + 1))
        assert lab.pilot.query("SELECT count(*) FROM rejected_readings WHERE device_id = %s",
                               device.device_id) == [(0,)]  # fmt: skip
        assert device.feedback() == []


def test_an_outage_buffers_readings_and_delivers_them_late_none_lost(lab):
    device = lab.device("blood_pressure_monitor")
    status = lab.watch_status(device.device_id)
    start = real_now() - timedelta(hours=3)
    values = {"bp_systolic": 135.0, "bp_diastolic": 85.0, "heart_rate": 70.0}

    device.take(Measurement(start, values))
    device.pump(start, link_up=True, wall_now=real_now())
    assert state(status) == "online"
    for i in range(1, 13):  # two hours without a link, a measurement every 10 minutes
        moment = start + timedelta(minutes=10 * i)
        device.take(Measurement(moment, {**values, "bp_systolic": 135.0 + i}))
        device.pump(moment, link_up=False, wall_now=real_now())
    assert state(status) == "offline"  # the Last Will: the link went down under it
    assert not device.connected
    assert device.pending_readings() >= 36
    assert device.next_seq == 40

    device.drain(start + timedelta(hours=2, minutes=30), wall_now=real_now())
    assert state(status) == "online"
    assert lab.wait_for_count("readings", device.device_id, 39) == 39
    assert [seq for seq, _, _ in lab.readings(device.device_id)] == list(range(1, 40))
    late = lab.readings(device.device_id, "seq, received_at - measured_at")
    assert all(delay > timedelta(minutes=30) for seq, delay in late if seq > 3)
    # the backlog went oldest first in one message, as the contract allows
    assert lab.pilot.query(
        "SELECT readings, oldest_at < newest_at FROM device_messages WHERE device_id = %s"
        " ORDER BY readings", device.device_id,
    )[-1] == (36, True)  # fmt: skip
    assert device.pending_readings() == 0
    assert device.connections == 2


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from ehealthlab.simulators.device import Device
    from ehealthlab.simulators.device_config import DeviceConfig, DeviceRegistration
    from ehealthlab.simulators.measurement import Measurement

    args = json.loads(sys.argv[1])
    device = Device(DeviceRegistration(**args["registration"]), Path(args["state_dir"]),
                    DeviceConfig(max_in_flight=5, max_batch_readings=1))
    start = datetime.fromisoformat(args["start"])
    def measure(i):
        return Measurement(start + timedelta(minutes=i), {"body_temperature": 36.0 + i / 10})
    for i in range(10):
        device.take(measure(i))
    device.drain(datetime.now(UTC))            # delivered and forgotten
    for i in range(10, 20):
        device.take(measure(i))
    device.pump(datetime.now(UTC))             # published; acknowledgements never read
    for i in range(20, 30):
        device.take(measure(i))                # kept on disk, never sent
    print(json.dumps({"next_seq": device.next_seq, "pending": device.pending_readings()}),
          flush=True)
    time.sleep(600)
    """
)


def test_a_killed_simulator_resumes_its_seq_and_flushes_its_buffer(lab, tmp_path):
    registration = lab.register("thermometer")
    state_dir = tmp_path / "killed"
    start = real_now() - timedelta(hours=1)
    args = {"registration": {"device_id": registration.device_id, "device_type": "thermometer",
            "host": registration.host, "port": registration.port,
            "password": registration.password},
            "state_dir": str(state_dir), "start": start.isoformat()}  # fmt: skip
    with subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)],
                          stdout=subprocess.PIPE, text=True) as child:  # fmt: skip
        try:
            line = child.stdout.readline()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=15)
    assert child.returncode == -signal.SIGKILL
    assert json.loads(line) == {"next_seq": 31, "pending": 20}

    device = Device(registration, state_dir, DeviceConfig(max_in_flight=5, max_batch_readings=1))
    lab.keep(device)
    assert device.next_seq == 31
    assert device.pending_seqs() == list(range(11, 31))
    for i in range(30, 35):
        taken = device.take(Measurement(start + timedelta(minutes=i), {"body_temperature": 37.0}))
        assert taken is not None and taken.seqs == range(i + 1, i + 2)
    device.drain(real_now())
    assert lab.wait_for_count("readings", registration.device_id, 35) == 35
    assert [seq for seq, _, _ in lab.readings(registration.device_id)] == list(range(1, 36))
    assert lab.pilot.query(
        "SELECT count(*), count(DISTINCT seq) FROM readings WHERE device_id = %s",
        registration.device_id,
    ) == [(35, 35)]


def test_a_message_sent_again_after_a_restart_is_a_redelivery_not_duplicates(lab, tmp_path):
    """A simulator that dies between its publication and the broker's PUBACK sends the
    message again on restart, with the same msg_id and readings and a fresh sent_at (here
    ten minutes later): ingest logs a second delivery of one message, counts no duplicate,
    and keeps the clock offset of the copy it stored (contract v1.1)."""
    registration = lab.register("thermometer")
    state_dir = tmp_path / "resent"
    now = real_now()
    dying = lab.keep(Device(registration, state_dir))
    dying.take(Measurement(now - timedelta(minutes=10), {"body_temperature": 37.1}))
    dying.pump(now)  # published; the process dies before it reads the PUBACK
    assert lab.wait_for_count("readings", registration.device_id, 1) == 1

    restarted = lab.keep(Device(registration, state_dir))
    assert restarted.pending_seqs() == [1]
    restarted.drain(now + timedelta(minutes=10))  # its sent_at reads 600 s ahead
    messages = (
        "SELECT msg_id, deliveries, accepted, duplicates, abs(clock_offset_s) < 60"
        " FROM device_messages WHERE device_id = %s"
    )
    expected = [("s1-1", 2, 1, 0, True)]
    assert lab.pilot.wait_for(messages, expected, registration.device_id) == expected
    assert lab.readings(registration.device_id, "seq, clock_corrected") == [(1, False)]
    assert lab.pilot.query(
        "SELECT count(*) FROM duplicate_readings WHERE device_id = %s", registration.device_id
    ) == [(0,)]


def test_a_badly_set_clock_is_corrected_in_the_store_a_drifting_one_is_not(lab):
    taken_at = real_now().replace(microsecond=0) - timedelta(minutes=10)
    wrong = lab.device("thermometer", DeviceConfig(clock=DeviceClock(offset_s=3600)))
    reset = lab.device("thermometer", DeviceConfig(clock=DeviceClock(offset_s=-2 * 86400)))
    drifting = lab.device(
        "thermometer",
        DeviceConfig(clock=DeviceClock(drift_ppm=40, set_at=taken_at - timedelta(days=30))),
    )
    for device in (wrong, reset, drifting):
        device.take(Measurement(taken_at, {"body_temperature": 36.9}))
        device.drain(real_now())
    for device, error_s, corrected in ((wrong, 3600, True), (reset, -2 * 86400, True),
                                       (drifting, 103, False)):  # fmt: skip
        assert lab.wait_for_count("readings", device.device_id, 1) == 1
        [(at, measured_at, clock_corrected, offset)] = lab.readings(
            device.device_id, "at, measured_at, clock_corrected, clock_offset_s"
        )
        assert (at - taken_at).total_seconds() == error_s
        assert clock_corrected is corrected
        if corrected:  # the store shows when it was really measured (a second or two off)
            assert abs((measured_at - taken_at).total_seconds()) < 30
            assert offset == pytest.approx(-error_s, abs=30)
        else:
            assert measured_at == at


@pytest.mark.parametrize("mode", list(FaultMode))
def test_each_fault_mode_is_refused_for_its_reason_and_nothing_breaks(lab, mode):
    faulty = lab.device("blood_pressure_monitor",
                        DeviceConfig(faults=FaultShares(**{mode.value: 1.0})))  # fmt: skip
    values = {"bp_systolic": 128.0, "bp_diastolic": 82.0, "heart_rate": 66.0}
    start = real_now() - timedelta(minutes=30)
    for i in range(2):  # two measurements, two messages
        faulty.take(Measurement(start + timedelta(minutes=i), values))
        faulty.drain(real_now())
    reason = EXPECTED_REASON[mode]
    device_id = faulty.device_id
    if mode is FaultMode.DUPLICATE:
        assert lab.wait_for_count("duplicate_readings", device_id, 6) == 6
        assert lab.wait_for_count("readings", device_id, 6) == 6
        assert lab.pilot.query(
            "SELECT count(*) FROM rejected_readings WHERE device_id = %s", device_id
        ) == [(0,)]
    else:
        whole = mode is FaultMode.MALFORMED_JSON
        expected = 2 if whole else 6
        assert lab.wait_for_count("rejected_readings", device_id, expected) == expected
        rows = lab.pilot.query(
            "SELECT reason, seq IS NULL, item_index IS NULL, msg_id IS NULL"
            " FROM rejected_readings WHERE device_id = %s",
            device_id,
        )
        missing_seq = whole or mode is FaultMode.MISSING_SEQ
        assert set(rows) == {(reason.value, missing_seq, whole, whole)}
        assert lab.readings(device_id) == []
        # the device heard why, on its feedback topic
        assert eventually(lambda: len(faulty.feedback()) == 2)
        assert {r.reason for f in faulty.feedback() for r in f.rejected} == {reason}
    assert faulty.pending_readings() == 0  # delivered: what the platform made of it is its say
    # the worker goes on: a well-behaved device's reading still lands
    clean = lab.device("thermometer")
    clean.take(Measurement(real_now(), {"body_temperature": 36.5}))
    clean.drain(real_now())
    assert lab.wait_for_count("readings", clean.device_id, 1) == 1
    assert lab.worker.thread.is_alive()


def test_a_five_thousand_message_backlog_keeps_the_in_flight_window(lab):
    device = lab.device("thermometer", DeviceConfig(max_in_flight=1000, max_batch_readings=1))
    start = real_now() - timedelta(days=5)
    for i in range(5000):  # an outage long enough to pile up 5,000 messages
        device.take(Measurement(start + timedelta(minutes=i), {"body_temperature": 36.0}))
    device.pump(real_now())
    assert device.in_flight == 1000  # the window filled at once, and no further
    device.drain(real_now(), timeout_s=300)
    assert device.peak_in_flight == 1000
    assert lab.wait_for_count("readings", device.device_id, 5000, timeout=180) == 5000
    assert lab.pilot.query(
        "SELECT count(DISTINCT seq), min(seq), max(seq), count(DISTINCT msg_id)"
        " FROM readings WHERE device_id = %s",
        device.device_id,
    ) == [(5000, 1, 5000, 5000)]


def test_the_last_will_says_offline_after_a_drop_and_a_clean_close_says_so_too(lab):
    device = lab.device("pulse_oximeter")
    status = lab.watch_status(device.device_id)
    device.pump(real_now())
    assert state(status) == "online"
    device.drop()
    assert state(status) == "offline"
    device.pump(real_now())
    assert state(status) == "online"
    device.disconnect()
    assert state(status) == "offline"
    # what the broker keeps for anyone who asks later
    assert state(lab.watch_status(device.device_id)) == "offline"


def test_a_device_connected_only_to_send_still_hears_its_feedback(lab):
    """stay_connected=False: connect while there is something to send, then say offline and
    leave; with a session kept, feedback published meanwhile arrives on the next visit."""
    config = DeviceConfig(stay_connected=False, session_expiry_s=600,
                          faults=FaultShares(wrong_units=1.0))  # fmt: skip
    device = lab.device("glucometer", config)
    status = lab.watch_status(device.device_id)
    device.pump(real_now())
    assert not device.connected and device.connections == 0  # nothing to send: no visit
    device.take(Measurement(real_now() - timedelta(minutes=2), {"blood_glucose": 180.0}))
    device.drain(real_now())
    assert [state(status), state(status)] == ["online", "offline"]
    assert not device.connected
    assert lab.wait_for_count("rejected_readings", device.device_id, 1) == 1
    device.take(Measurement(real_now() - timedelta(minutes=1), {"blood_glucose": 150.0}))
    device.drain(real_now())
    assert eventually(lambda: len(device.feedback()) >= 1)
    assert device.feedback()[0].msg_id == "s1-1"
    assert device.connections == 2


def test_an_empty_battery_kills_the_device_until_it_is_recharged(lab):
    config = DeviceConfig(
        battery=Battery(capacity_measurements=2, recharge_after=timedelta(days=1))
    )
    device = lab.device("thermometer", config)
    status = lab.watch_status(device.device_id)
    start = real_now() - timedelta(days=2)
    for i in range(2):
        assert device.take(Measurement(start + timedelta(hours=i), {"body_temperature": 36.5}))
    device.pump(start + timedelta(hours=1), wall_now=real_now())
    assert state(status) == "online"
    assert device.take(Measurement(start + timedelta(hours=2), {"body_temperature": 36.6})) is None
    assert device.dead
    assert state(status) == "offline"  # died mid-connection: the Will speaks for it
    assert device.take(Measurement(start + timedelta(hours=20), {"body_temperature": 36.6})) is None
    device.pump(start + timedelta(hours=21), wall_now=real_now())
    assert not device.connected
    taken = device.take(Measurement(start + timedelta(hours=27), {"body_temperature": 36.7}))
    assert taken is not None and taken.seqs == range(3, 4)  # no seq for what was never taken
    assert not device.dead
    device.drain(start + timedelta(hours=27), wall_now=real_now())
    assert state(status) == "online"
    assert lab.wait_for_count("readings", device.device_id, 3) == 3
    assert [seq for seq, _, _ in lab.readings(device.device_id)] == [1, 2, 3]


def test_a_battery_state_survives_a_restart(tmp_path):
    registration = DeviceRegistration("dev-battery", "thermometer", "127.0.0.1", 1, "x")
    config = DeviceConfig(battery=Battery(capacity_days=1))
    device = Device(registration, tmp_path, config)
    assert device.take(Measurement(T0, {"body_temperature": 36.5})) is not None
    assert device.take(Measurement(T0 + timedelta(days=1), {"body_temperature": 36.5})) is None
    device.close()
    restarted = Device(registration, tmp_path, config)
    assert restarted.dead
    assert restarted.take(Measurement(T0 + timedelta(days=3), {"body_temperature": 36.5})) is None
    restarted.recharge(T0 + timedelta(days=3))
    taken = restarted.take(Measurement(T0 + timedelta(days=3), {"body_temperature": 36.5}))
    assert taken is not None and taken.seqs == range(2, 3)
    restarted.close()


def test_a_device_that_cannot_reach_the_broker_keeps_buffering_and_retries_later(tmp_path):
    registration = DeviceRegistration("dev-alone", "thermometer", "127.0.0.1", free_port(), "x")
    device = Device(registration, tmp_path, DeviceConfig(retry_after=timedelta(minutes=5)))
    device.take(Measurement(T0, {"body_temperature": 36.5}))
    device.pump(T0)
    assert not device.connected
    assert "cannot reach the MQTT broker" in (device.last_error or "")
    device.last_error = None
    device.pump(T0 + timedelta(minutes=4))  # too soon: no new attempt
    assert device.last_error is None
    device.pump(T0 + timedelta(minutes=5))
    assert device.last_error is not None
    assert device.pending_seqs() == [1]
    device.close()
