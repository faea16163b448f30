"""A pilot scenario: read the TOML file that describes a simulated pilot, and validate it.

`load_scenario(path)` reads the file (the only file this module reads) and `parse_scenario`
validates the parsed document: its shape against `scenario_file.ScenarioFile` (pydantic),
then against the reference municipalities (an unknown ISTAT code is named in the error),
and applies the assumptions it overrides. The result, a `Scenario`, is what the expansions
take: `patients.simulated_patients`, `measurement_stream.pilot_measurements` and
`municipality_broadband.outage_schedules`.

The file's fields are described in docs/simulators.md; ehealthlab/simulators/scenarios/
example.toml is a complete example.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.behaviour import DEFAULT_BEHAVIOUR, BehaviourAssumptions
from ehealthlab.simulators.broadband import (
    DEFAULT_BROADBAND,
    BroadbandAssumptions,
    override_profile,
)
from ehealthlab.simulators.episodes import DEFAULT_PHYSIOLOGY, PhysiologyAssumptions
from ehealthlab.simulators.scenario_file import ScenarioFile, Startup
from ehealthlab.store.reference import municipality_rows

EXAMPLE_SCENARIO = Path(__file__).parent / "scenarios" / "example.toml"


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
