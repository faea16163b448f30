"""The scenario TOML as written: its schema, validated field by field with pydantic.

Pure: it checks a parsed document's shape, ranges and internal consistency (condition shares
sum to 1, every condition has a care plan, every device a plan needs is offered). What needs
the reference municipalities is checked by `scenario.parse_scenario`. The fields are
described in docs/simulators.md.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.simulators.care_plans import assign_devices, combined_care_plan
from ehealthlab.simulators.conditions import Condition

IstatCode = Annotated[str, StringConstraints(pattern=r"^\d{6}$")]
SnaiClass = Literal["A", "B", "C", "D", "E", "F"]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


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
