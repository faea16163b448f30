"""`ehealthlab demo`: the whole pilot, in one command, on the local stack.

It starts the stack, builds the store and loads the reference data, and starts the API (with
the portal) and an ingest worker as background services of the stack (they keep running
after the demo, until `ehealthlab stack down`). Then three chapters, all of it simulated and
registered as such:

1. a day of the pilot by hand and a simulated week (`first_chapter.py`);
2. the example pilot: about 200 patients in 9 municipalities, three start-ups, two
   mini-pilots, 30 days backfilled, then a few minutes live (`pilot.py`);
3. its outputs: the pilot report, the evaluations behind the FHIR MeasureReports, the Grafana
   dashboards and their provisioning (`outputs.py`).

It ends by printing where everything is: the portal's login page with a token for each kind
of organisation, the report, the dashboards, and how to stop it all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from ehealthlab.demo.common import say
from ehealthlab.demo.first_chapter import play_a_day, simulate_a_week
from ehealthlab.demo.in_process import LocalServices
from ehealthlab.demo.outputs import Outputs, write_outputs
from ehealthlab.demo.pilot import PilotOptions, provider_and_startup_tokens, run_pilot
from ehealthlab.errors import ConfigurationError, StackError
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.settings import Settings
from ehealthlab.simulators.onboarding import PROVIDER_NAME
from ehealthlab.stack.local import LocalStack
from ehealthlab.stack.service_status import format_status
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import Connection, connect
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

__all__ = ["LocalServices", "register", "run_demo"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pilot on the local stack, simulated, and leave it running",
        description="Start the local PostgreSQL and Mosquitto (unless EHEALTHLAB_DATABASE_URL "
        "/ EHEALTHLAB_MQTT_HOST point elsewhere), build the store, start the API (with the "
        "portal) and an ingest worker in the background; play a day of the pilot and a "
        "simulated week; run the example pilot (about 200 patients in 9 municipalities, "
        "three start-ups, two mini-pilots, 30 days backfilled, then a few minutes live); "
        "write the pilot report, the MeasureReports' evaluations and the Grafana dashboards. "
        "Everything stays up until `ehealthlab stack down`.",
    )
    parser.add_argument(
        "--live-minutes",
        type=float,
        default=3.0,
        metavar="M",
        help="how long the pilot runs live after the backfill (default 3)",
    )
    parser.add_argument(
        "--patients",
        type=int,
        default=200,
        metavar="N",
        help="patients of the example pilot, spread as in its scenario (default 200)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=30,
        metavar="D",
        help="days backfilled, ending yesterday (default 30)",
    )
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where the report, dashboards and tokens go (default: "
                        "<EHEALTHLAB_STATE_DIR>/demo)")  # fmt: skip
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 <= args.live_minutes <= 24 * 60:
        raise ConfigurationError("--live-minutes must be between 0 and 1440")
    if not 1 <= args.patients <= 5000:
        raise ConfigurationError("--patients must be between 1 and 5000")
    if not 1 <= args.days <= 365:
        raise ConfigurationError("--days must be between 1 and 365")
    began = time.monotonic()
    console = Console(stderr=True)
    stack = LocalStack(settings)
    out = (args.out or stack.state_dir / "demo").resolve()
    _chapter(console, "The LAB: stack, store, API with the portal, ingest")
    with console.status("starting PostgreSQL and Mosquitto"):
        stack.up()
    settings = settings_with_stack(settings)
    with console.status("building the store"), connect(settings, autocommit=True) as conn:
        report = migrate(conn, settings.store_form)
        municipalities = load_municipalities(conn)
        _require_an_empty_pilot(conn)
    say(f"store: {report.form} form, {municipalities} municipalities of the reference data")
    with console.status("starting the API and the ingest worker in the background"):
        statuses = stack.start_services()
    for line in format_status(statuses):
        say("  " + line)
    url = stack.api_url()
    if url is None:
        raise StackError("the API is not running; see `ehealthlab stack status`")
    operator = bootstrap_operator(settings)["token"]

    _chapter(console, "Chapter 1: a day of the pilot, then a simulated week")
    play_a_day(url, operator)
    simulate_a_week(settings, url, operator, stack.state_dir)

    _chapter(console, "Chapter 2: the example pilot")
    run_dir = stack.state_dir / "simulations" / f"demo-pilot-{uuid.uuid4().hex[:6]}"
    options = PilotOptions(args.patients, args.days, args.live_minutes)
    pilot = run_pilot(settings, url, operator, run_dir=run_dir, options=options, console=console)

    _chapter(console, "Chapter 3: the indicators, the report, the dashboards")
    with console.status("computing the indicators, the report and the dashboards"):
        outputs = write_outputs(settings, pilot.period, pilot.onboarded, out)
    say(
        f"pilot report of {pilot.period.start} to {pilot.period.end} (excluded), simulated "
        f"population: {outputs.report}"
    )
    say(
        f"published {outputs.evaluations} evaluations (every grouping and each whole week): "
        f"FHIR MeasureReports at {url}/fhir/MeasureReport"
    )
    say(
        f"{len(outputs.dashboard_files)} Grafana dashboards and the provisioning of "
        f"{outputs.grafana_organisations} Grafana organisations in {outputs.dashboards}"
    )
    tokens = {"CMTo (operator)": operator} | provider_and_startup_tokens(pilot.onboarded)
    tokens_file = _write_tokens(out / "tokens.json", tokens)
    _where_everything_is(
        url, tokens, outputs, tokens_file=tokens_file, stack=stack,
        seconds=time.monotonic() - began,
    )  # fmt: skip
    return 0


def _require_an_empty_pilot(conn: Connection) -> None:
    """The demo onboards its own cast: on a stack that holds organisations already (an
    earlier demo, or someone's pilot) it would add a second cast beside them."""
    row = conn.execute("SELECT count(*) FROM organisations WHERE kind <> 'operator'").fetchone()
    held = row[0] if row is not None else 0
    if held:
        raise ConfigurationError(
            f"this stack already holds a pilot ({held} organisations): the demo needs an empty "
            "one; `ehealthlab stack down --purge` deletes it, or give another "
            "EHEALTHLAB_STATE_DIR"
        )


def _chapter(console: Console, title: str) -> None:
    say(f"\n== {title} ==")
    console.file.flush()


def _write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        json.dump(tokens, stream, indent=2)
        stream.write("\n")
    return path


def _where_everything_is(
    url: str,
    tokens: dict[str, str],
    outputs: Outputs,
    *,
    tokens_file: Path,
    stack: LocalStack,
    seconds: float,
) -> None:
    executable = Path(sys.executable).with_name("ehealthlab")
    width = max(len(_kind(name)) for name in tokens)
    say(f"\n== The LAB is running (simulated data, labelled so), ready in {seconds:.0f} s ==")
    say(f"portal      {url}/portal/login  (log in by pasting one of these tokens)")
    for name, token in tokens.items():
        say(f"  {_kind(name):<{width}}  {token}")
    say(f"API         {url}/docs  (the same tokens as Bearer tokens)")
    say(f"FHIR        {url}/fhir/MeasureReport  (the pilot's indicators)")
    say(f"report      {outputs.report}")
    say(f"dashboards  {outputs.dashboards}  (dashboards/, provisioning/, secrets/ for Grafana)")
    say(f"tokens      {tokens_file}")
    say(f"logs        {stack.state_dir / 'logs'}")
    say(
        f"The API (with the portal) and the ingest worker keep running. Status: "
        f"`{executable} stack status`; stop everything: `{executable} stack down` "
        "(add --purge to delete the data too)."
    )


def _kind(name: str) -> str:
    if name == "CMTo (operator)":
        return name
    if name == PROVIDER_NAME:
        return f"provider: {name}"
    return f"start-up: {name}"
