"""A pilot scenario: the TOML file that describes a simulated pilot, and its expansion.

`load_scenario(path)` reads and validates the file (pydantic, then against the reference
municipalities: an unknown ISTAT code is named in the error). `simulated_patients` expands
it into a deterministic list of patients, each with a municipality, conditions, a care plan,
devices from start-ups, and seeds keyed by who the patient is (municipality and number), so
adding a patient never changes another. `pilot_measurements` streams the whole pilot's
measurements in time order; `outage_schedules` gives each municipality's broadband.

The file's fields are described in docs/simulators.md; ehealthlab/simulators/scenarios/
example.toml is a complete example.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.behaviour import (
    DEFAULT_BEHAVIOUR,
    BehaviourAssumptions,
    DeviceMeasurement,
    DevicePlan,
    PatientSimulation,
    merge_by_time,
)
from ehealthlab.simulators.broadband import (
    DEFAULT_BROADBAND,
    BroadbandAssumptions,
    ConnectivityProfile,
    Outage,
    OutageSchedule,
    connectivity_profile,
    outage_schedule,
    override_profile,
)
from ehealthlab.simulators.conditions import Condition
from ehealthlab.simulators.episodes import DEFAULT_PHYSIOLOGY, PhysiologyAssumptions
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.simulators.seeds import derive, generator
from ehealthlab.store.reference import municipality_rows

EXAMPLE_SCENARIO = Path(__file__).parent / "scenarios" / "example.toml"

IstatCode = Annotated[str, StringConstraints(pattern=r"^\d{6}$")]
SnaiClass = Literal["A", "B", "C", "D", "E", "F"]
Share = Annotated[float, Field(ge=0.0, le=1.0)]

#: which device type serves each planned metric (heart rate: see `_device_for_heart_rate`)
METRIC_DEVICE: Mapping[str, str] = MappingProxyType(
    {
        "bp_systolic": "blood_pressure_monitor",
        "bp_diastolic": "blood_pressure_monitor",
        "spo2": "pulse_oximeter",
        "body_weight": "weighing_scale",
        "body_temperature": "thermometer",
        "blood_glucose": "glucometer",
        "steps": "activity_tracker",
        "respiratory_rate": "activity_tracker",
    }
)
_HEART_RATE_DEVICES = ("blood_pressure_monitor", "pulse_oximeter", "activity_tracker")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"a range is [low, high], got {list(pair)}")
    return pair


def _positive(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] <= 0:
        raise ValueError("days must be > 0")
    return pair


#: [low, high], drawn uniformly
Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
DaysRange = Annotated[Range, AfterValidator(_positive)]


class Period(_Model):
    start: date
    days: int = Field(ge=1, le=366)
    #: patients enrol on a day drawn uniformly from the first N+1 days (0: all on day one)
    enrolment_spread_days: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _spread_within_period(self) -> Self:
        if self.enrolment_spread_days >= self.days:
            raise ValueError("enrolment_spread_days must be shorter than the period")
        return self


class MunicipalityPatients(_Model):
    istat_code: IstatCode
    patients: int = Field(ge=1)


class SnaiMix(_Model):
    """`patients` spread over `municipalities` drawn (seeded) from one SNAI class."""

    snai_class: SnaiClass
    patients: int = Field(ge=1)
    municipalities: int = Field(3, ge=1)


class ConditionShare(_Model):
    conditions: list[Condition] = Field(min_length=1)
    share: float = Field(gt=0.0, le=1.0)

    @field_validator("conditions")
    @classmethod
    def _distinct(cls, value: list[Condition]) -> list[Condition]:
        if len(set(value)) != len(value):
            raise ValueError("a condition is listed twice")
        return value


class FaultSettings(_Model):
    """Share of messages each fault mode spoils, for conformance testing (exclusive: a message
    has at most one). Names match simulators.faults.FaultMode."""

    wrong_units: Share = 0.0
    missing_seq: Share = 0.0
    malformed_json: Share = 0.0
    duplicate: Share = 0.0

    @model_validator(mode="after")
    def _exclusive(self) -> Self:
        total = self.wrong_units + self.missing_seq + self.malformed_json + self.duplicate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault shares are exclusive: together at most 1, got {total:g}")
        return self


class DeviceSettings(_Model):
    """What the device simulators need beyond the patient: clocks, batteries, faults."""

    clock_drift_ppm: Range = (-20.0, 20.0)
    bad_clock_share: Share = 0.02
    #: a badly set clock is off by an amount drawn from this range
    bad_clock_offset_hours: Range = (-26.0, 26.0)
    battery_life_days: DaysRange = (60.0, 365.0)
    #: days before a flat battery is replaced
    battery_replacement_days: DaysRange = (1.0, 5.0)
    faults: FaultSettings = FaultSettings()


class Startup(_Model):
    name: str = Field(min_length=1)
    device_types: list[str] = Field(min_length=1)
    devices: DeviceSettings = DeviceSettings()

    @field_validator("device_types")
    @classmethod
    def _known_device_types(cls, value: list[str]) -> list[str]:
        unknown = [d for d in value if d not in DEVICE_TYPES]
        if unknown:
            raise ValueError(
                f"unknown device type(s) {', '.join(unknown)}: known are {', '.join(DEVICE_TYPES)}"
            )
        return value


class ForcedOutage(_Model):
    """An outage the scenario imposes (e.g. to rehearse a long one in an inner area)."""

    municipality: IstatCode
    start: AwareDatetime
    hours: float = Field(gt=0)


class Broadband(_Model):
    travel_time_elasticity: float | None = Field(None, ge=0)
    #: per SNAI class, fields of its ConnectivityProfile to replace
    classes: dict[SnaiClass, dict[str, float]] = {}
    #: per municipality, fields of its profile to replace (after the class and travel time)
    municipalities: dict[IstatCode, dict[str, float]] = {}
    outages: list[ForcedOutage] = []


class ScenarioFile(_Model):
    """The scenario TOML, as written."""

    name: str = Field(min_length=1)
    seed: int = Field(ge=0)
    period: Period
    municipalities: list[MunicipalityPatients] = []
    snai_mix: list[SnaiMix] = []
    conditions: list[ConditionShare] = Field(min_length=1)
    #: per condition: metric -> readings expected per day
    care_plans: dict[Condition, dict[str, Annotated[int, Field(ge=1, le=24)]]]
    startups: list[Startup] = Field(min_length=1)
    broadband: Broadband = Broadband()
    #: episode kind -> episodes per patient-month (episodes.EpisodeKind)
    episode_rates: dict[str, float] = {}
    #: BehaviourAssumptions field -> value
    behaviour: dict[str, float] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.municipalities and not self.snai_mix:
            raise ValueError("no patients: give municipalities and/or snai_mix")
        total = sum(c.share for c in self.conditions)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"condition shares must sum to 1, they sum to {total:g}")
        combos = [frozenset(c.conditions) for c in self.conditions]
        if len(set(combos)) != len(combos):
            raise ValueError("a combination of conditions is listed twice")
        classes = [m.snai_class for m in self.snai_mix]
        if len(set(classes)) != len(classes):
            raise ValueError("a SNAI class appears twice in snai_mix")
        names = [s.name for s in self.startups]
        if len(set(names)) != len(names):
            raise ValueError("two start-ups share a name")
        for condition, plan in self.care_plans.items():
            unknown = sorted(set(plan) - METRICS.keys())
            if unknown:
                raise ValueError(
                    f"care plan of {condition}: unknown metric(s) {', '.join(unknown)}"
                )
            if not plan:
                raise ValueError(f"care plan of {condition} is empty")
        offered = {d for s in self.startups for d in s.device_types}
        for share in self.conditions:
            for condition in share.conditions:
                if condition not in self.care_plans:
                    raise ValueError(f"condition {condition} has no care plan")
            plan = combined_care_plan(share.conditions, self.care_plans)
            missing = sorted(set(assign_devices(plan)) - offered)
            if missing:
                raise ValueError(
                    f"no start-up offers {', '.join(missing)}, needed by the care plan of "
                    + " + ".join(share.conditions)
                )
        return self


@dataclass(frozen=True, slots=True)
class ReferenceMunicipality:
    istat_code: str
    name: str
    population: int
    snai_class: str
    #: SNAI travel time to the reference pole, minutes (0 for poles)
    travel_time_minutes: float

    @property
    def inner_area(self) -> bool:
        return self.snai_class in {"D", "E", "F"}


def reference_municipalities() -> dict[str, ReferenceMunicipality]:
    """The shipped CMTo municipalities, by ISTAT code."""
    return {
        row[0]: ReferenceMunicipality(
            row[0], row[1], row[2], row[7], float(row[9]) if row[9] is not None else 0.0
        )
        for row in municipality_rows()
    }


@dataclass(frozen=True)
class Scenario:
    """A validated scenario, with the assumptions it overrides already applied."""

    file: ScenarioFile
    municipalities: Mapping[str, ReferenceMunicipality]
    physiology: PhysiologyAssumptions
    behaviour: BehaviourAssumptions
    broadband: BroadbandAssumptions
    #: where the scenario came from, for messages
    source: str

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def first_day(self) -> date:
        return self.file.period.start

    @property
    def end_day(self) -> date:
        """The day after the last simulated day."""
        return self.file.period.start + timedelta(days=self.file.period.days)

    @property
    def starts_at(self) -> datetime:
        return datetime.combine(self.first_day, time(0), PILOT_ZONE).astimezone(UTC)

    @property
    def ends_at(self) -> datetime:
        return datetime.combine(self.end_day, time(0), PILOT_ZONE).astimezone(UTC)

    def startup(self, name: str) -> Startup:
        for startup in self.file.startups:
            if startup.name == name:
                return startup
        raise InvalidInputError(f"scenario {self.source}: no start-up named {name!r}")


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_scenario(
    document: Mapping[str, Any],
    municipalities: Mapping[str, ReferenceMunicipality] | None = None,
    *,
    source: str = "<scenario>",
) -> Scenario:
    """Validate a scenario document (parsed TOML); InvalidInputError says what is wrong."""
    reference = reference_municipalities() if municipalities is None else municipalities
    try:
        parsed = ScenarioFile.model_validate(document)
    except ValidationError as exc:
        raise InvalidInputError(f"scenario {source}: {_format_validation_error(exc)}") from None
    try:
        _check_against_reference(parsed, reference)
        broadband = DEFAULT_BROADBAND.with_class_overrides(
            {str(k): v for k, v in parsed.broadband.classes.items()}
        )
        if parsed.broadband.travel_time_elasticity is not None:
            broadband = BroadbandAssumptions(
                broadband.classes,
                broadband.reference_travel_minutes,
                parsed.broadband.travel_time_elasticity,
                broadband.travel_time_max_factor,
            )
        for changes in parsed.broadband.municipalities.values():
            override_profile(broadband.classes["A"], changes)  # names checked here
        physiology = DEFAULT_PHYSIOLOGY.with_rates(parsed.episode_rates)
        behaviour = DEFAULT_BEHAVIOUR.with_overrides(parsed.behaviour)
    except InvalidInputError as exc:
        raise InvalidInputError(f"scenario {source}: {exc}") from None
    return Scenario(parsed, reference, physiology, behaviour, broadband, source)


def _check_against_reference(
    parsed: ScenarioFile, reference: Mapping[str, ReferenceMunicipality]
) -> None:
    def known(code: str, where: str) -> None:
        if code not in reference:
            raise InvalidInputError(
                f"{where}: unknown municipality ISTAT code {code!r}"
                " (not in the CMTo reference table)"
            )

    seen: set[str] = set()
    for entry in parsed.municipalities:
        known(entry.istat_code, "municipalities")
        if entry.istat_code in seen:
            raise InvalidInputError(f"municipalities: {entry.istat_code} is listed twice")
        seen.add(entry.istat_code)
    for mix in parsed.snai_mix:
        available = [
            m
            for m in reference.values()
            if m.snai_class == mix.snai_class and m.istat_code not in seen
        ]
        if len(available) < mix.municipalities:
            raise InvalidInputError(
                f"snai_mix: class {mix.snai_class} has {len(available)} municipalities not"
                f" listed explicitly, {mix.municipalities} asked"
            )
    for code in parsed.broadband.municipalities:
        known(code, "broadband.municipalities")
    for outage in parsed.broadband.outages:
        known(outage.municipality, "broadband.outages")


def load_scenario(
    path: Path, municipalities: Mapping[str, ReferenceMunicipality] | None = None
) -> Scenario:
    """Read and validate a scenario TOML file."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"scenario {path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"scenario {path}: not valid TOML: {exc}") from None
    return parse_scenario(document, municipalities, source=str(path))


# -- care plans and devices -----------------------------------------------------------------


def combined_care_plan(
    conditions: Sequence[Condition], care_plans: Mapping[Condition, Mapping[str, int]]
) -> dict[str, int]:
    """One plan for several conditions: each metric at its highest frequency."""
    plan: dict[str, int] = {}
    for condition in conditions:
        for metric, per_day in care_plans[condition].items():
            plan[metric] = max(plan.get(metric, 0), per_day)
    return dict(sorted(plan.items()))


def assign_devices(care_plan: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Split a care plan over device types (device type -> its part of the plan).

    Heart rate goes to a cuff, else an oximeter, else a tracker the patient already has,
    else to a cuff of its own.
    """
    devices: dict[str, dict[str, int]] = {}
    for metric, per_day in care_plan.items():
        if metric in METRIC_DEVICE:
            devices.setdefault(METRIC_DEVICE[metric], {})[metric] = per_day
    if "heart_rate" in care_plan:
        holder = next((d for d in _HEART_RATE_DEVICES if d in devices), _HEART_RATE_DEVICES[0])
        devices.setdefault(holder, {})["heart_rate"] = care_plan["heart_rate"]
    return dict(sorted(devices.items()))


# -- patients -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceTraits:
    """A simulated device's own imperfections, drawn once (seeded) from its start-up's settings.

    They map onto the device simulator's configuration: `payloads.DeviceClock(offset_s,
    drift_ppm, set_at=enrolment start)`, `device.Battery(capacity_days=battery_life_days,
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


# -- broadband ------------------------------------------------------------------------------


def municipality_profile(scenario: Scenario, istat_code: str) -> ConnectivityProfile:
    """The connectivity assumed for one municipality, with the scenario's overrides."""
    municipality = scenario.municipalities.get(istat_code)
    if municipality is None:
        raise InvalidInputError(f"unknown municipality ISTAT code {istat_code!r}")
    profile = connectivity_profile(
        municipality.snai_class, municipality.travel_time_minutes, scenario.broadband
    )
    changes = scenario.file.broadband.municipalities.get(istat_code)
    return override_profile(profile, changes) if changes else profile


def outage_schedules(
    scenario: Scenario, patients: Sequence[SimulatedPatient] | None = None
) -> dict[str, OutageSchedule]:
    """Per municipality with patients: its link's outages over the period (seeded by code)."""
    chosen = simulated_patients(scenario) if patients is None else patients
    forced: dict[str, list[Outage]] = {}
    for outage in scenario.file.broadband.outages:
        start = outage.start.astimezone(UTC)
        forced.setdefault(outage.municipality, []).append(
            Outage(start, start + timedelta(hours=outage.hours))
        )
    schedules = {}
    for code in sorted({p.municipality for p in chosen}):
        schedule = outage_schedule(
            municipality_profile(scenario, code),
            derive(scenario.file.seed, "broadband", code),
            scenario.starts_at,
            scenario.ends_at,
        )
        schedules[code] = schedule.with_outages(forced.get(code, ()))
    return schedules
