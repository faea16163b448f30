"""Drive a simulated pilot on simulated time: patients measure, devices keep their readings
and send them over their municipality's broadband.

One loop over the pilot's measurements in time order (`measurement_stream.py` produces
them lazily). Time either follows the wall clock at a chosen speed (`speed=1`: real time,
`3600`: an hour a second) or jumps from event to event (backfill, as fast as possible). When a
device's link is down its readings stay in its disk buffer; it tries again when the outage
ends, and the backlog arrives late, as over real broadband. Every message states its
simulated receive time (send time + the municipality's latency), which the platform believes
from devices registered as simulated only.

A run keeps its state (what was onboarded, each device's buffer and `seq`, how far each device
got) in its state directory: run the same command again after a crash and it resumes.

At most `max_open` devices are open at once (their buffer, their connection): paho waits on
its sockets with select(), which cannot watch a file descriptor numbered 1024 or more, so
hundreds of open devices in one process would stall. Real-time and accelerated runs close the
least recently used device when they need another; a backfill, whose receive times are
simulated anyway, runs the patients in groups small enough to stay open together.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ehealthlab.errors import EhealthlabError
from ehealthlab.simulators.battery import Battery
from ehealthlab.simulators.broadband import ConnectivityProfile, OutageSchedule
from ehealthlab.simulators.device import Device
from ehealthlab.simulators.device_config import DeviceConfig
from ehealthlab.simulators.faults import FaultShares
from ehealthlab.simulators.measurement_stream import PilotMeasurement, pilot_measurements
from ehealthlab.simulators.municipality_broadband import municipality_profile, outage_schedules
from ehealthlab.simulators.onboarding import Onboarded, device_key
from ehealthlab.simulators.patients import PatientDevice, SimulatedPatient
from ehealthlab.simulators.payloads import DeviceClock
from ehealthlab.simulators.scenario import Scenario
from ehealthlab.simulators.seeds import generator

log = logging.getLogger(__name__)

#: how long after the link returns a device tries again (its reconnect timer), doubled after
#: each failed attempt while the link is up (a revoked device, a broker gone) up to an hour
RETRY_AFTER = timedelta(seconds=30)
RETRY_AT_MOST = timedelta(hours=1)
#: after the period, how long (simulated) devices keep trying to send what they hold
FINISH_WITHIN = timedelta(days=2)
#: in backfill, collect acknowledgements of every device after this many measurements
_ACK_ROUND_EVERY = 500
_TAKEN_THROUGH = "runner_taken_through"


@dataclass
class RunReport:
    """What a run did, for the progress line and the final summary."""

    period_start: datetime
    period_end: datetime
    simulated_now: datetime
    measurements: int = 0
    skipped_already_taken: int = 0
    not_taken_battery: int = 0
    deferred_by_outage: int = 0
    session_drops: int = 0
    devices: int = 0
    pending_readings: int = 0
    wall_seconds: float = 0.0
    undelivered: dict[str, str] = field(default_factory=dict)


class PilotRun:
    """One run of a scenario's devices over their broadband, on simulated time."""

    def __init__(
        self,
        scenario: Scenario,
        patients: list[SimulatedPatient],
        onboarded: Onboarded,
        state_dir: Path,
        *,
        speed: float | None,
        max_open: int = 100,
        progress: Callable[[RunReport], None] | None = None,
        progress_every: int = 50,
    ) -> None:
        if speed is not None and not speed > 0:
            raise EhealthlabError("the speed must be more than 0")
        self.scenario = scenario
        self.patients = patients
        self.onboarded = onboarded
        self.state_dir = state_dir
        self.speed = speed
        self.max_open = max_open
        self.progress = progress
        self.progress_every = progress_every
        self.start, self.end = scenario.starts_at, scenario.ends_at
        self.schedules: Mapping[str, OutageSchedule] = outage_schedules(scenario, patients)
        self.profiles: dict[str, ConnectivityProfile] = {
            code: municipality_profile(scenario, code) for code in self.schedules
        }
        self.report = RunReport(self.start, self.end, self.start)
        self._devices: OrderedDict[str, Device] = OrderedDict()  # open, least recently used first
        self._specs: dict[str, tuple[SimulatedPatient, PatientDevice]] = {
            device_key(p, d): (p, d) for p in patients for d in p.devices
        }
        self._network: dict[str, np.random.Generator] = {}
        self._seen: set[str] = set()
        self._left_behind: dict[str, int] = {}  # readings buffered on devices now closed
        self._failures: dict[str, int] = {}  # failed connection attempts in a row
        self._retries: list[tuple[datetime, str]] = []
        self._retrying: set[str] = set()

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> RunReport:
        stop = stop or threading.Event()
        wall_start = time.monotonic()
        try:
            for group in self._groups():
                clock = _Clock(self.start, self.speed)
                self._run_group(group, clock, stop, wall_start)
                self._close_all()
                if stop.is_set():
                    break
        finally:
            self._close_all()
            self._refresh_report(wall_start)
        if self.progress is not None:
            self.progress(self.report)
        return self.report

    def _groups(self) -> list[list[SimulatedPatient]]:
        """All patients at once, or for a backfill groups whose devices stay open together."""
        if self.speed is not None:
            return [self.patients]
        groups: list[list[SimulatedPatient]] = [[]]
        devices = 0
        for patient in self.patients:
            if groups[-1] and devices + len(patient.devices) > self.max_open:
                groups.append([])
                devices = 0
            groups[-1].append(patient)
            devices += len(patient.devices)
        return groups

    def _run_group(
        self,
        patients: list[SimulatedPatient],
        clock: _Clock,
        stop: threading.Event,
        wall_start: float,
    ) -> None:
        for count, item in enumerate(self._measurements(patients), start=1):
            if not clock.wait_until(item.taken_at, stop, self._between_events):
                return
            self._retry_due(item.taken_at)
            self._take(item)
            if self.speed is None and count % _ACK_ROUND_EVERY == 0:
                self._collect_all(item.taken_at)
            self.report.simulated_now = max(self.report.simulated_now, item.taken_at)
            if self.progress is not None and count % self.progress_every == 0:
                self._refresh_report(wall_start)
                self.progress(self.report)
        if not stop.is_set():
            self._finish(clock, stop)

    def _measurements(self, patients: list[SimulatedPatient]) -> Iterator[PilotMeasurement]:
        for item in pilot_measurements(self.scenario, patients):
            if self.start <= item.taken_at < self.end:
                yield item

    def _between_events(self, now: datetime) -> None:
        """While waiting for the next measurement (real-time and accelerated runs)."""
        self._retry_due(now)
        self._collect_all(now)
        self.report.simulated_now = now
        if self.progress is not None:
            self.progress(self.report)

    def _finish(self, clock: _Clock, stop: threading.Event) -> None:
        """Send what is left: each device when its link is next up (outages may run past the
        period's end: a backlog is still a backlog)."""
        horizon = self.end + FINISH_WITHIN
        while self._retries and self._retries[0][0] <= horizon and not stop.is_set():
            when, _ = self._retries[0]
            if not clock.wait_until(when, stop, self._between_events):
                return
            self._retry_due(when)
        self._retries.clear()
        self._retrying.clear()
        now = max(self.end, self.report.simulated_now)
        for key in [*self._devices, *self._left_behind]:
            device = self._device(key)  # reopened if it was closed with readings left
            if not device.pending_readings():
                continue
            schedule = self.schedules[self._municipality(key)]
            when = max(now, schedule.next_up(now))
            try:
                device.drain(when, simulated_received_at=self._received(key, when))
            except EhealthlabError as exc:
                self.report.undelivered[device.device_id] = str(exc)

    # -- one device ------------------------------------------------------------------------

    def _take(self, item: PilotMeasurement) -> None:
        key = device_key(item.patient, item.device)
        device = self._device(key)
        through = device.marked(_TAKEN_THROUGH)
        if through is not None and item.taken_at <= datetime.fromisoformat(through):
            self.report.skipped_already_taken += 1  # taken before a restart
            return
        progress = {_TAKEN_THROUGH: item.taken_at.isoformat()}
        taken = device.take(item.measurement, marks=progress)
        if taken is None:  # nothing kept (a flat battery): note that it was passed over
            device.mark(_TAKEN_THROUGH, item.taken_at.isoformat())
            self.report.not_taken_battery += 1
            return
        self.report.measurements += 1
        self._pump(key, item.taken_at)

    def _pump(self, key: str, now: datetime) -> None:
        device = self._device(key)
        municipality = self._municipality(key)
        up = self.schedules[municipality].is_up(now)
        if up and device.connected and self.profiles[municipality].session_drops(self._rng(key)):
            device.drop()  # the session breaks mid-way: reconnect, resend, same msg_id
            self.report.session_drops += 1
        device.pump(now, up, simulated_received_at=self._received(key, now))
        if device.connected:
            self._failures.pop(key, None)
        elif up:  # the link was up and still no connection: refused, or the broker is away
            self._failures[key] = self._failures.get(key, 0) + 1
        if device.pending_readings() > 0 and not device.connected:
            self._schedule_retry(key, now)

    def _received(self, key: str, now: datetime) -> datetime:
        latency = self.profiles[self._municipality(key)].latency_seconds(self._rng(key))
        return now + timedelta(seconds=latency)

    def _schedule_retry(self, key: str, now: datetime) -> None:
        if key in self._retrying:
            return
        schedule = self.schedules[self._municipality(key)]
        failures = min(self._failures.get(key, 0), 7)
        when = max(schedule.next_up(now), now) + min(RETRY_AFTER * 2**failures, RETRY_AT_MOST)
        if not schedule.is_up(now):
            self.report.deferred_by_outage += 1
        heapq.heappush(self._retries, (when, key))
        self._retrying.add(key)

    def _retry_due(self, now: datetime) -> None:
        while self._retries and self._retries[0][0] <= now:
            when, key = heapq.heappop(self._retries)
            self._retrying.discard(key)
            self._pump(key, when)

    def _collect_all(self, now: datetime) -> None:
        for key in list(self._devices):
            device = self._devices.get(key)
            if device is not None and (device.in_flight or device.pending_readings()):
                self._pump(key, now)

    def _municipality(self, key: str) -> str:
        return self._specs[key][0].municipality

    def _rng(self, key: str) -> np.random.Generator:
        """The network's randomness for one device (its own stream: groups do not matter)."""
        rng = self._network.get(key)
        if rng is None:
            rng = self._network[key] = generator(self.scenario.file.seed, "network", key)
        return rng

    def _device(self, key: str) -> Device:
        """The device, opened (and the least recently used one closed) if need be."""
        known = self._devices.get(key)
        if known is not None:
            self._devices.move_to_end(key)
            return known
        while len(self._devices) >= self.max_open:
            self._close(*self._devices.popitem(last=False))
        _, device = self._specs[key]
        onboarded = self.onboarded.devices[key]
        traits = device.traits
        faults = self.scenario.startup(device.startup).devices.faults
        config = DeviceConfig(
            clock=DeviceClock(
                offset_s=traits.clock_offset_s,
                drift_ppm=traits.clock_drift_ppm,
                set_at=self.start,
            ),
            battery=Battery(
                capacity_days=traits.battery_life_days,
                recharge_after=timedelta(days=traits.battery_replacement_days),
            ),
            faults=FaultShares(**faults.model_dump(), seed=traits.fault_seed),
            session_expiry_s=3600,
        )
        state = self.state_dir / "devices" / onboarded.device_id
        opened = Device(onboarded.as_registration(), state, config)
        self._left_behind.pop(key, None)
        self._devices[key] = opened
        self._seen.add(key)
        self.report.devices = len(self._seen)
        return opened

    def _close(self, key: str, device: Device) -> None:
        pending = device.pending_readings()
        device.close()
        if pending:
            self._left_behind[key] = pending

    def _close_all(self) -> None:
        while self._devices:
            self._close(*self._devices.popitem(last=False))

    def _refresh_report(self, wall_start: float) -> None:
        self.report.wall_seconds = time.monotonic() - wall_start
        self.report.pending_readings = sum(self._left_behind.values()) + sum(
            d.pending_readings() for d in self._devices.values()
        )


class _Clock:
    """Simulated time: jumps to each event (backfill, `speed` None), or follows the wall
    clock at `speed` simulated seconds per second from when the run started."""

    def __init__(self, start: datetime, speed: float | None, tick_s: float = 0.2) -> None:
        self.start = start
        self.speed = speed
        self.tick_s = tick_s
        self._wall_start = time.monotonic()

    def now(self) -> datetime:
        if self.speed is None:
            raise RuntimeError("a backfill has no wall-clock time")
        return self.start + timedelta(seconds=(time.monotonic() - self._wall_start) * self.speed)

    def wait_until(
        self, when: datetime, stop: threading.Event, meanwhile: Callable[[datetime], None]
    ) -> bool:
        """False when stopped before `when` came."""
        if self.speed is None:
            return not stop.is_set()
        while True:
            now = self.now()
            if now >= when:
                return not stop.is_set()
            meanwhile(now)
            wait_s = min(self.tick_s, (when - now).total_seconds() / self.speed)
            if stop.wait(max(wait_s, 0.0)):
                return False
