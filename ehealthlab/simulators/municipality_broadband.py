"""Each municipality's broadband in a scenario: its link's profile and outages over the period.

Pure and seeded (by ISTAT code, so adding a municipality never changes another's outages).
It applies the scenario's overrides and forced outages to the models of broadband.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, timedelta

from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.broadband import (
    ConnectivityProfile,
    Outage,
    OutageSchedule,
    connectivity_profile,
    outage_schedule,
    override_profile,
)
from ehealthlab.simulators.patients import SimulatedPatient, simulated_patients
from ehealthlab.simulators.scenario import Scenario
from ehealthlab.simulators.seeds import derive


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
