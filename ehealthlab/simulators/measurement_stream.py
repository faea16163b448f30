"""The pilot's measurements: every simulated patient's, merged into one stream in time order.

Pure and lazy. `patient_simulation` gives one patient's measurement model
(`behaviour.PatientSimulation`) over their enrolment; `pilot_measurements` merges all the
patients' streams, each measurement with the patient and device that took it, for the
runner to hand to the devices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from ehealthlab.simulators.behaviour import DeviceMeasurement, PatientSimulation, merge_by_time
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.simulators.patients import PatientDevice, SimulatedPatient, simulated_patients
from ehealthlab.simulators.scenario import Scenario


def patient_simulation(scenario: Scenario, patient: SimulatedPatient) -> PatientSimulation:
    """The measurements model of one patient over their enrolment."""
    return PatientSimulation(
        conditions=patient.conditions,
        devices=[d.plan for d in patient.devices],
        start=patient.enrolment_start,
        days=patient.enrolment_days,
        seed=patient.seed,
        physiology=scenario.physiology,
        behaviour=scenario.behaviour,
    )


@dataclass(frozen=True, slots=True)
class PilotMeasurement:
    """A measurement of the pilot, with the patient and device that took it."""

    patient: SimulatedPatient
    device: PatientDevice
    measurement: Measurement

    @property
    def taken_at(self) -> datetime:
        return self.measurement.taken_at


def _patient_stream(
    patient: SimulatedPatient, simulation: PatientSimulation
) -> Iterator[PilotMeasurement]:
    devices = {d.device_type: d for d in patient.devices}
    item: DeviceMeasurement
    for item in simulation.measurements():
        yield PilotMeasurement(patient, devices[item.device_type], item.measurement)


def pilot_measurements(
    scenario: Scenario, patients: Sequence[SimulatedPatient] | None = None
) -> Iterator[PilotMeasurement]:
    """Every measurement of the pilot (or of `patients`), lazily and in time order."""
    chosen = simulated_patients(scenario) if patients is None else patients
    streams = [_patient_stream(p, patient_simulation(scenario, p)) for p in chosen]
    return merge_by_time(streams, key=lambda m: m.taken_at)
