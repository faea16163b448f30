"""Simulated devices of every type against a real broker, a real ingest worker and a real
store: outages, a SIGKILLed simulator, a message sent again after a restart, bad clocks,
faults, a 5,000-message backlog, battery death and the Last Will."""

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

import orjson
import pytest
from api_fixtures import template_copy
from ingest_fixtures import Pilot, RunningWorker
from simulator_fixtures import TYPICAL

from ehealthlab.contract.topics import status_topic
from ehealthlab.mqtt import MqttConnection
from ehealthlab.simulators.battery import Battery
from ehealthlab.simulators.device import Device
from ehealthlab.simulators.device_config import DeviceConfig, DeviceRegistration
from ehealthlab.simulators.faults import EXPECTED_REASON, FaultMode, FaultShares
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.simulators.payloads import DeviceClock

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
