"""`ehealthlab simulate SCENARIO.toml [--speed X | --backfill]`: run a simulated pilot.

It onboards the scenario's start-ups, devices (registered as simulated), patients and
enrolments through the API (`EHEALTHLAB_API_URL`, an operator token in `EHEALTHLAB_TOKEN`),
then drives the devices over their municipalities' broadband. Run it again with the same
state directory to resume after a stop: nothing is registered or measured twice.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from ehealthlab.api.client import GatewayClient
from ehealthlab.errors import ConfigurationError
from ehealthlab.settings import Settings
from ehealthlab.simulators.onboarding import onboard
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.runner import PilotRun, RunReport
from ehealthlab.simulators.scenario import load_scenario


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a simulated pilot scenario through the gateway and the broker",
        description="Onboard a scenario's start-ups, devices, patients and enrolments through "
        "the API, then drive its simulated devices over their municipalities' broadband: in "
        "real time, accelerated (--speed) or as fast as possible (--backfill).",
    )
    parser.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=float,
        default=None,
        metavar="X",
        help="simulated seconds per second (default 1: real time; 3600: an hour a second)",
    )
    pace.add_argument(
        "--backfill", action="store_true", help="the whole period as fast as possible"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the run keeps its state (default: <EHEALTHLAB_STATE_DIR>/simulations/"
        "<scenario name>); the same directory resumes a run",
    )
    parser.add_argument(
        "--max-connected",
        type=int,
        default=100,
        metavar="N",
        help="devices open (connected, buffer open) at once, at most (default 100)",
    )
    parser.add_argument("--api-url", default=None, help="default: EHEALTHLAB_API_URL")
    parser.add_argument(
        "--token", default=None, help="an operator token; default: EHEALTHLAB_TOKEN"
    )
    parser.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.speed is not None and not args.speed > 0:
        raise ConfigurationError("--speed must be more than 0")
    if args.max_connected < 1:
        raise ConfigurationError("--max-connected must be at least 1")
    api_url = args.api_url or settings.api_url or f"http://{settings.api_host}:{settings.api_port}"
    token = args.token or (settings.token.get_secret_value() if settings.token else None)
    if not token:
        raise ConfigurationError("no operator token: set EHEALTHLAB_TOKEN or pass --token")
    scenario = load_scenario(args.scenario)
    patients = simulated_patients(scenario)
    state_dir = args.state_dir or settings.state_dir / "simulations" / args.scenario.stem
    console = Console(stderr=True)
    console.print(
        f"[bold]{scenario.name}[/]: {len(patients)} patients, "
        f"{sum(len(p.devices) for p in patients)} devices, {scenario.file.period.days} days "
        f"from {scenario.first_day}; state in {state_dir}"
    )
    client = GatewayClient(api_url, token)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, _stopper(stop))
    logging.getLogger("ehealthlab.simulators").setLevel(logging.WARNING)
    try:
        with progress_bar(console) as progress:
            task = progress.add_task("onboarding", total=len(patients))
            onboarded = onboard(
                client, patients, state_dir,
                progress=lambda done, total: progress.update(task, completed=done),
            )  # fmt: skip
            speed = None if args.backfill else (args.speed or 1.0)
            days = progress.add_task(
                "backfill" if speed is None else f"x{speed:g}", total=scenario.file.period.days
            )

            def show(report: RunReport) -> None:
                elapsed = (report.simulated_now - report.period_start).total_seconds() / 86400
                progress.update(
                    days,
                    completed=min(elapsed, scenario.file.period.days),
                    description=f"{report.measurements} measurements, "
                    f"{report.pending_readings} readings buffered",
                )

            run = PilotRun(
                scenario, patients, onboarded, state_dir, speed=speed,
                max_open=args.max_connected, progress=show,
            )  # fmt: skip
            try:
                report = run.run(stop)
            except KeyboardInterrupt:
                stop.set()
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print(_summary(report, stopped=stop.is_set()))
    return 0 if not report.undelivered else 1


def progress_bar(console: Console) -> Progress:
    """A bar on standard error: shown while it runs on a terminal, its last state otherwise."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _stopper(stop: threading.Event) -> Any:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return handle


def _summary(report: RunReport, *, stopped: bool) -> str:
    resumed = (
        f" ({report.skipped_already_taken} taken before a restart)"
        if report.skipped_already_taken
        else ""
    )
    lines = [
        ("stopped at " if stopped else "done: ")
        + f"{report.simulated_now:%Y-%m-%d %H:%M} UTC (simulated), {report.wall_seconds:.1f} s",
        f"  {report.measurements} measurements taken by {report.devices} devices{resumed}",
        f"  {report.deferred_by_outage} sends deferred by broadband outages, "
        f"{report.session_drops} sessions dropped, "
        f"{report.not_taken_battery} measurements missed with a flat battery",
        f"  {report.pending_readings} readings still buffered on devices",
    ]
    for device_id, why in sorted(report.undelivered.items()):
        lines.append(f"  not delivered: {device_id}: {why}")
    return "\n".join(lines)
