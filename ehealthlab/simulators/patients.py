"""A scenario's simulated patients: who each one is, and which devices they were given.

Pure and seeded. `simulated_patients` expands a `Scenario` into a deterministic list of
patients, each with a municipality, conditions, a care plan, devices from start-ups (with
the devices' own imperfections, `DeviceTraits`), and seeds keyed by who the patient is
(municipality and number), so adding a patient never changes another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from types import MappingProxyType

import numpy as np

from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.behaviour import DevicePlan
from ehealthlab.simulators.care_plans import assign_devices, combined_care_plan
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.scenario import Scenario
from ehealthlab.simulators.scenario_file import DeviceSettings
from ehealthlab.simulators.seeds import derive, generator


@dataclass(frozen=True, slots=True)
class DeviceTraits:
    """A simulated device's own imperfections, drawn once (seeded) from its start-up's settings.

    They map onto the device simulator's configuration: `payloads.DeviceClock(offset_s,
    drift_ppm, set_at=enrolment start)`, `battery.Battery(capacity_days=battery_life_days,
    recharge_after=battery_replacement_days)` and `faults.FaultShares(..., seed=fault_seed)`.
    """

    clock_drift_ppm: float
    #: 0 unless the device's clock is badly set
    clock_offset_s: float
    battery_life_days: float
    battery_replacement_days: float
    fault_seed: int


@dataclass(frozen=True, slots=True)
class PatientDevice:
    device_type: str
    startup: str
    #: metric -> readings per day: the care plan of this device's enrolment
    care_plan: Mapping[str, int]
    serial: str
    traits: DeviceTraits

    @property
    def plan(self) -> DevicePlan:
        return DevicePlan(self.device_type, self.care_plan)


@dataclass(frozen=True, slots=True)
class SimulatedPatient:
    """One simulated patient, fully determined by the scenario and who they are."""

    patient_id: str
    municipality: str
    snai_class: str
    conditions: tuple[Condition, ...]
    care_plan: Mapping[str, int]
    devices: tuple[PatientDevice, ...]
    enrolment_start: date
    enrolment_days: int
    seed_entropy: int
    seed_key: tuple[int, ...]

    @property
    def seed(self) -> np.random.SeedSequence:
        """The root of every stream of this patient (use `seeds.derive(seed, name)`)."""
        return np.random.SeedSequence(self.seed_entropy, spawn_key=self.seed_key)

    def device(self, device_type: str) -> PatientDevice:
        for device in self.devices:
            if device.device_type == device_type:
                return device
        raise InvalidInputError(f"patient {self.patient_id} has no {device_type}")


def _patient_slots(
    scenario: Scenario,
) -> list[tuple[str, int]]:
    """(municipality, number within it) for every patient, in a stable order."""
    file, reference = scenario.file, scenario.municipalities
    slots = [(m.istat_code, i) for m in file.municipalities for i in range(m.patients)]
    explicit = {m.istat_code for m in file.municipalities}
    for mix in file.snai_mix:
        candidates = sorted(
            code
            for code, m in reference.items()
            if m.snai_class == mix.snai_class and code not in explicit
        )
        rng = generator(file.seed, "snai-mix", mix.snai_class)
        chosen = [
            candidates[int(i)]
            for i in rng.choice(len(candidates), mix.municipalities, replace=False)
        ]
        slots.extend((chosen[k % len(chosen)], k // len(chosen)) for k in range(mix.patients))
    return slots


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else bounds[0]


def _draw_traits(rng: np.random.Generator, settings: DeviceSettings) -> DeviceTraits:
    drift = _uniform(rng, settings.clock_drift_ppm)
    bad = rng.random() < settings.bad_clock_share
    offset = _uniform(rng, settings.bad_clock_offset_hours) * 3600
    return DeviceTraits(
        clock_drift_ppm=drift,
        clock_offset_s=offset if bad else 0.0,
        battery_life_days=_uniform(rng, settings.battery_life_days),
        battery_replacement_days=_uniform(rng, settings.battery_replacement_days),
        fault_seed=int(rng.integers(2**63)),
    )


def _patient(scenario: Scenario, municipality: str, number: int) -> SimulatedPatient:
    file = scenario.file
    seed = derive(file.seed, "patient", municipality, number)
    shares = np.array([c.share for c in file.conditions])
    pick = int(generator(seed, "conditions").choice(len(shares), p=shares / shares.sum()))
    conditions = tuple(file.conditions[pick].conditions)
    care_plan = combined_care_plan(conditions, file.care_plans)
    spread = file.period.enrolment_spread_days
    offset = int(generator(seed, "enrolment").integers(0, spread + 1)) if spread else 0
    patient_id = f"sim-{municipality}-{number + 1:03d}"
    devices = []
    for device_type, plan in assign_devices(care_plan).items():
        offering = [s for s in file.startups if device_type in s.device_types]
        startup = offering[int(generator(seed, "startup", device_type).integers(len(offering)))]
        devices.append(
            PatientDevice(
                device_type=device_type,
                startup=startup.name,
                care_plan=MappingProxyType(plan),
                serial=f"{patient_id}-{device_type}",
                traits=_draw_traits(generator(seed, "traits", device_type), startup.devices),
            )
        )
    return SimulatedPatient(
        patient_id=patient_id,
        municipality=municipality,
        snai_class=scenario.municipalities[municipality].snai_class,
        conditions=conditions,
        care_plan=MappingProxyType(care_plan),
        devices=tuple(devices),
        enrolment_start=file.period.start + timedelta(days=offset),
        enrolment_days=file.period.days - offset,
        seed_entropy=int(seed.entropy),  # type: ignore[arg-type]  # always an int here
        seed_key=tuple(seed.spawn_key),
    )


def simulated_patients(scenario: Scenario) -> list[SimulatedPatient]:
    """Every patient of the scenario, in a stable order (explicit municipalities, then mixes)."""
    return [_patient(scenario, code, number) for code, number in _patient_slots(scenario)]
