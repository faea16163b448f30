"""A simulated device on its own, without a broker: the disk buffer (seq and msg_ids kept
across reopens, measurements never split, backlogs in messages within the contract's
limits), the battery's state across a restart, and retries while the broker is out of
reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from simulator_fixtures import T0

from ehealthlab.contract.messages import MAX_PAYLOAD_BYTES
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.battery import Battery
from ehealthlab.simulators.buffer import StoreAndForward
from ehealthlab.simulators.device import Device
from ehealthlab.simulators.device_config import DeviceConfig, DeviceRegistration
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.simulators.payloads import (
    DeviceClock,
    ReadingsBuilder,
    encode,
    fits,
    readings_message,
)
from ehealthlab.stack.ports import free_port

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


# -- a device's own state, with no broker to reach ----------------------------------------


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
