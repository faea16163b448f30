"""Onboarding a simulated pilot through the real gateway API, resumable.

Start-ups, the health provider, patients, devices (registered as simulated) and enrolments
are created exactly as real ones are, with the tokens the API hands out. What was created is
kept in the run's state directory (`onboarding.json`, owner-only: it holds tokens and MQTT
passwords), written after every step, so a run stopped half-way resumes where it was and a
second run over the same directory creates nothing twice.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from ehealthlab.api.client import GatewayClient
from ehealthlab.errors import ConflictError
from ehealthlab.simulators.device_config import DeviceRegistration
from ehealthlab.simulators.patients import PatientDevice, SimulatedPatient

STATE_FILE = "onboarding.json"
PROVIDER_NAME = "Simulated health provider"


def device_key(patient: SimulatedPatient, device: PatientDevice) -> str:
    """A simulated device's name in the run: its patient and its type."""
    return f"{patient.patient_id}/{device.device_type}"


@dataclass
class OnboardedDevice:
    key: str
    startup: str
    municipality: str
    registration: dict[str, Any]
    enrolment_id: str | None = None

    @property
    def device_id(self) -> str:
        return str(self.registration["device_id"])

    def as_registration(self) -> DeviceRegistration:
        return DeviceRegistration(**self.registration)


@dataclass
class Onboarded:
    """Everything the API gave the run; saved as JSON after each change."""

    tag: str
    organisations: dict[str, dict[str, str]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    devices: dict[str, OnboardedDevice] = field(default_factory=dict)

    @classmethod
    def load_or_new(cls, state_dir: Path) -> Onboarded:
        path = state_dir / STATE_FILE
        if not path.exists():
            return cls(tag=secrets.token_hex(3))
        data = json.loads(path.read_text(encoding="utf-8"))
        devices = {k: OnboardedDevice(**v) for k, v in data.pop("devices").items()}
        return cls(devices=devices, **data)

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STATE_FILE
        partial = path.with_suffix(".tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(asdict(self), stream, indent=1, sort_keys=True)
        partial.replace(path)

    def token_of(self, name: str) -> str:
        return self.organisations[name]["token"]


def onboard(
    client: GatewayClient,
    patients: Sequence[SimulatedPatient],
    state_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Onboarded:
    """Create what is missing of the scenario's organisations, patients, devices and
    enrolments through the API; `progress(done, total)` after each patient."""
    done = Onboarded.load_or_new(state_dir)
    done.save(state_dir)  # the run's tag first: a rerun after a kill finds its names again
    for name in sorted({d.startup for p in patients for d in p.devices}):
        _organisation(client, done, state_dir, "startup", name)
    _organisation(client, done, state_dir, "provider", PROVIDER_NAME)
    provider_token = done.token_of(PROVIDER_NAME)
    for count, patient in enumerate(patients, start=1):
        _patient(client, done, state_dir, patient, provider_token)
        for device in patient.devices:
            onboarded = _device(client, done, state_dir, patient, device)
            if onboarded.enrolment_id is None:
                onboarded.enrolment_id = _enrol(client, done, patient, device, provider_token)
                done.save(state_dir)
        if progress is not None:
            progress(count, len(patients))
    return done


def _organisation(
    client: GatewayClient, done: Onboarded, state_dir: Path, kind: str, name: str
) -> None:
    if name in done.organisations:
        return
    created = client.post(
        "/api/v1/organisations",
        {"kind": kind, "name": f"{name} [simulation {done.tag}]", "simulated": True},
    )
    done.organisations[name] = {"id": str(created["id"]), "token": str(created["token"])}
    done.save(state_dir)


def _patient(
    client: GatewayClient,
    done: Onboarded,
    state_dir: Path,
    patient: SimulatedPatient,
    provider_token: str,
) -> None:
    if patient.patient_id in done.patients:
        return
    try:
        created = client.post(
            "/api/v1/patients",
            {"identifier": f"{patient.patient_id}-{done.tag}", "label": patient.patient_id},
            token=provider_token,
        )
        patient_id = str(created["id"])
    except ConflictError:  # created before a kill, not yet saved here: find it
        listed = client.get("/api/v1/patients", token=provider_token)
        patient_id = next(str(p["id"]) for p in listed if p["label"] == patient.patient_id)
    done.patients[patient.patient_id] = patient_id
    done.save(state_dir)


def _device(
    client: GatewayClient,
    done: Onboarded,
    state_dir: Path,
    patient: SimulatedPatient,
    device: PatientDevice,
) -> OnboardedDevice:
    key = device_key(patient, device)
    known = done.devices.get(key)
    if known is not None:
        return known
    token = done.token_of(device.startup)
    serial = f"{device.serial}-{done.tag}"
    try:
        answer = client.post(
            "/api/v1/devices",
            {
                "type": device.device_type,
                "model": f"{device.startup} {device.device_type}",
                "serial": serial,
            },
            token=token,
        )
    except ConflictError:  # registered before a kill: new credentials for it (its password
        # was only ever shown in the answer that was lost)
        listed = client.get("/api/v1/devices", token=token)
        device_id = next(d["device_id"] for d in listed if d["serial"] == serial)
        answer = client.post(f"/api/v1/devices/{device_id}/credentials", {}, token=token)
    registration = DeviceRegistration.from_api(answer, device.device_type)
    onboarded = OnboardedDevice(key, device.startup, patient.municipality, asdict(registration))
    done.devices[key] = onboarded
    done.save(state_dir)
    return onboarded


def _enrol(
    client: GatewayClient,
    done: Onboarded,
    patient: SimulatedPatient,
    device: PatientDevice,
    provider_token: str,
) -> str:
    end = patient.enrolment_start + timedelta(days=patient.enrolment_days - 1)
    patient_id = done.patients[patient.patient_id]
    device_id = done.devices[device_key(patient, device)].device_id
    try:
        created = client.post(
            "/api/v1/enrolments",
            {
                "patient_id": patient_id,
                "device_id": device_id,
                "municipality": patient.municipality,
                "start": patient.enrolment_start.isoformat(),
                "end": end.isoformat(),
                "care_plan": dict(device.care_plan),
            },
            token=provider_token,
        )
    except ConflictError:  # recorded before a kill: it is this patient's, with this device
        shown = client.get(f"/api/v1/patients/{patient_id}", token=provider_token)
        return next(str(e["id"]) for e in shown["enrolments"] if e["device_id"] == device_id)
    return str(created["id"])
