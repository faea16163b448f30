"""The demo's second chapter: the example pilot (`simulators/scenarios/demo-pilot.toml`).

About 200 simulated patients in 9 municipalities from Torino (SNAI A) to Balme (F), three
start-ups, two mini-pilots CMTo defines through the API, 30 days backfilled through the API,
the broker and ingest (the period is moved so that it ends yesterday), then a few minutes
live in real time. Every organisation, device and patient is registered as simulated.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from ehealthlab.api.client import GatewayClient
from ehealthlab.contract.pilot_time import PILOT_ZONE
from ehealthlab.demo.common import api, progress_bar, say, wait_until
from ehealthlab.evaluation.dataset import Period
from ehealthlab.settings import Settings
from ehealthlab.simulators.measurement_stream import pilot_measurements
from ehealthlab.simulators.onboarding import PROVIDER_NAME, Onboarded, onboard
from ehealthlab.simulators.patients import SimulatedPatient, simulated_patients
from ehealthlab.simulators.runner import PilotRun, RunReport
from ehealthlab.simulators.scenario import Scenario, parse_scenario
from ehealthlab.store.db import connect

DEMO_PILOT = "scenarios/demo-pilot.toml"
INNER_AREAS = frozenset("DEF")


@dataclass(frozen=True)
class PilotOptions:
    patients: int = 200
    days: int = 30
    live_minutes: float = 3.0


@dataclass(frozen=True)
class PilotRunResult:
    scenario: Scenario
    onboarded: Onboarded
    #: the backfilled days, the report's and the MeasureReports' period
    period: Period
    mini_pilots: list[str]


def demo_scenario(patients: int, days: int, today: date) -> Scenario:
    """The example pilot, its `days` ending yesterday, about `patients` patients (each
    municipality's share kept, at least one each); forced outages move with the period, and
    those that would no longer fall in the backfilled days are left out."""
    source = resources.files("ehealthlab.simulators") / DEMO_PILOT
    document: dict[str, Any] = tomllib.loads(source.read_text(encoding="utf-8"))
    start = today - timedelta(days=days)
    shift = start - document["period"]["start"]
    document["period"]["start"] = start
    document["period"]["days"] = days + 2  # today live, and tomorrow if it runs past midnight
    spread = document["period"].get("enrolment_spread_days", 0)
    document["period"]["enrolment_spread_days"] = min(spread, max(days - 1, 0))
    total = sum(m["patients"] for m in document["municipalities"])
    for municipality in document["municipalities"]:
        municipality["patients"] = max(1, round(municipality["patients"] * patients / total))
    first = datetime.combine(start, datetime.min.time(), PILOT_ZONE)
    last = datetime.combine(today, datetime.min.time(), PILOT_ZONE)
    outages = []
    for outage in document.get("broadband", {}).get("outages", []):
        moved = outage["start"] + shift
        if first <= moved and moved + timedelta(hours=outage["hours"]) <= last:
            outages.append({**outage, "start": moved})
    if "broadband" in document:
        document["broadband"]["outages"] = outages
    return parse_scenario(document, source=str(source))


def run_pilot(
    settings: Settings,
    url: str,
    operator: str,
    *,
    run_dir: Path,
    options: PilotOptions,
    console: Console,
) -> PilotRunResult:
    today = datetime.now(PILOT_ZONE).date()
    scenario = demo_scenario(options.patients, options.days, today)
    patients = simulated_patients(scenario)
    municipalities = sorted({p.municipality for p in patients})
    classes = sorted({scenario.municipalities[c].snai_class for c in municipalities})
    say(
        f"\n{scenario.name}: {len(patients)} patients, "
        f"{sum(len(p.devices) for p in patients)} devices of {len(scenario.file.startups)} "
        f"start-ups, {len(municipalities)} municipalities (SNAI {', '.join(classes)}); "
        f"{options.days} days from {scenario.first_day} backfilled, then "
        f"{options.live_minutes:g} minutes live"
    )
    client = GatewayClient(url, operator)
    with progress_bar(console) as progress:
        task = progress.add_task("onboarding through the API", total=len(patients))
        onboarded = onboard(
            client, patients, run_dir,
            progress=lambda done, total: progress.update(task, completed=done),
        )  # fmt: skip
    say(
        f"  onboarded through the API: {len(onboarded.organisations)} organisations, "
        f"{len(onboarded.patients)} patients, {len(onboarded.devices)} devices with enrolments"
    )
    period = Period(scenario.first_day, today)
    mini_pilots = _define_mini_pilots(
        url, operator, scenario=scenario, patients=patients, onboarded=onboarded, period=period
    )
    cast = _Cast(settings, scenario, patients, onboarded, run_dir, console)
    cast.backfill()
    cast.live(options.live_minutes)
    return PilotRunResult(scenario, onboarded, period, mini_pilots)


def _define_mini_pilots(
    url: str,
    operator: str,
    *,
    scenario: Scenario,
    patients: Sequence[SimulatedPatient],
    onboarded: Onboarded,
    period: Period,
) -> list[str]:
    """Two mini-pilots, as CMTo defines them (POST /api/v1/mini-pilots): telecare in the
    inner areas over the whole period, cuffs and oximeters in the centres its second half."""
    codes = sorted({p.municipality for p in patients})
    inner = [c for c in codes if scenario.municipalities[c].snai_class in INNER_AREAS]
    centres = [c for c in codes if c not in inner]
    last = period.end - timedelta(days=1)
    half = period.start + (period.end - period.start) // 2
    plans = [
        ("Valli: telecare in the inner areas", ["Valli Telecare", "Alpi Digital Health"],
         inner, period.start),
        ("Centres: cuffs and oximeters", ["Sensoria Torino", "Alpi Digital Health"],
         centres, half),
    ]  # fmt: skip
    defined = []
    for title, startups, where, start in plans:
        ids = [onboarded.organisations[s]["id"] for s in startups if s in onboarded.organisations]
        if not ids or not where:
            continue
        name = f"{title} [simulation {onboarded.tag}]"
        api(url, operator, "POST", "/mini-pilots", {
            "name": name, "startups": ids, "municipalities": where,
            "start": start.isoformat(), "end": last.isoformat(),
        })  # fmt: skip
        defined.append(name)
        names = ", ".join(scenario.municipalities[c].name for c in where)
        say(f"  CMTo defined the mini-pilot {name!r}: {len(ids)} start-ups in {names}")
    return defined


@dataclass(frozen=True)
class _Cast:
    """The pilot's simulated patients and devices, onboarded, and where their run keeps its
    state (the live part carries on from the backfill's devices: seq, buffers)."""

    settings: Settings
    scenario: Scenario
    patients: list[SimulatedPatient]
    onboarded: Onboarded
    run_dir: Path
    console: Console

    def backfill(self) -> None:
        settings, scenario, patients = self.settings, self.scenario, self.patients
        onboarded, run_dir, console = self.onboarded, self.run_dir, self.console
        now = datetime.now(UTC)
        window = [
            item
            for item in pilot_measurements(scenario, patients)
            if scenario.starts_at <= item.taken_at < now
        ]
        expected = sum(len(item.measurement.values) for item in window)
        with progress_bar(console) as progress:
            task = progress.add_task("backfill: the devices measure and send", total=len(window))

            def show(report: RunReport) -> None:
                progress.update(task, completed=report.measurements)

            run = PilotRun(scenario, patients, onboarded, run_dir, speed=None, progress=show)
            run.end = now  # the period runs on into tomorrow; its past is backfilled
            report = run.run()
        say(
            f"  backfilled {report.measurements} measurements of {report.devices} devices in "
            f"{report.wall_seconds:.0f} s: {report.deferred_by_outage} sends held back by "
            f"outages, {report.session_drops} broken sessions resent"
        )
        device_ids = [d.device_id for d in onboarded.devices.values()]
        with connect(settings) as conn, progress_bar(console) as progress:
            task = progress.add_task("ingest: readings stored or rejected", total=expected)

            def all_in() -> bool:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM readings WHERE device_id = ANY(%(d)s))"
                    " + (SELECT count(*) FROM rejected_readings WHERE device_id = ANY(%(d)s))",
                    {"d": device_ids},
                ).fetchone()
                conn.rollback()
                count = int(row[0]) if row is not None else 0
                progress.update(task, completed=min(count, expected))
                return count >= expected

            if report.not_taken_battery or report.undelivered:
                say("  (some measurements were not taken or sent; not waiting for every one)")
            else:
                wait_until(all_in, what=f"the {expected} backfilled readings", timeout_s=300)
                say(f"  all {expected} readings in the store (stored, or rejected with a reason)")

    def live(self, minutes: float) -> None:
        settings, scenario, patients = self.settings, self.scenario, self.patients
        onboarded, run_dir, console = self.onboarded, self.run_dir, self.console
        if minutes <= 0:
            return
        start = datetime.now(UTC)
        seconds = minutes * 60
        stop = threading.Event()
        timer = threading.Timer(seconds, stop.set)
        with progress_bar(console) as progress:
            task = progress.add_task("live, in real time (Ctrl-C ends it)", total=seconds)

            def show(report: RunReport) -> None:
                elapsed = (datetime.now(UTC) - start).total_seconds()
                progress.update(
                    task,
                    completed=min(elapsed, seconds),
                    description=f"live (Ctrl-C ends it): {report.measurements} measurements",
                )

            run = PilotRun(scenario, patients, onboarded, run_dir, speed=1.0, progress=show)
            run.start = start  # its clock starts now; what came before was backfilled
            run.end = scenario.ends_at  # ended by the timer, not by the period
            timer.start()
            try:
                run.run(stop)
            except KeyboardInterrupt:  # Ctrl-C ends the live part, not the demo
                say("  (the live part ended early: Ctrl-C)")
            finally:
                timer.cancel()
                stop.set()
        report = run.report
        device_ids = [d.device_id for d in onboarded.devices.values()]
        with connect(settings) as conn:
            row = conn.execute(
                "SELECT count(*) FROM readings WHERE device_id = ANY(%s) AND received_at >= %s",
                (device_ids, start),
            ).fetchone()
        stored = int(row[0]) if row is not None else 0
        say(
            f"  live for {minutes:g} minutes: {report.measurements} measurements taken, "
            f"{stored} readings stored so far (patients measure mostly mornings and evenings, "
            f"so a live part at night is quiet); the devices stop here, the platform runs on"
        )


def provider_and_startup_tokens(onboarded: Onboarded) -> dict[str, str]:
    """Name -> token of the pilot's organisations (the provider first)."""
    tokens = {PROVIDER_NAME: onboarded.token_of(PROVIDER_NAME)}
    tokens.update(
        {n: o["token"] for n, o in sorted(onboarded.organisations.items()) if n != PROVIDER_NAME}
    )
    return tokens
