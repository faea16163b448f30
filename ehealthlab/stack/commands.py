"""`ehealthlab stack up | down | status | env`: the local PostgreSQL and Mosquitto, and the
API and ingest worker in the background (`up --services`, `ehealthlab demo`)."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import replace
from typing import Any

from ehealthlab.settings import Settings
from ehealthlab.stack.local import LocalStack
from ehealthlab.stack.service_status import format_status


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    stack = subparsers.add_parser(
        "stack",
        help="the local PostgreSQL and Mosquitto",
        description="A private PostgreSQL and Mosquitto on 127.0.0.1, with their data and "
        "secrets in EHEALTHLAB_STATE_DIR (default .ehealthlab/). A service given by "
        "EHEALTHLAB_DATABASE_URL or EHEALTHLAB_MQTT_HOST is external: nothing is started "
        "for it.",
    )
    commands = stack.add_subparsers(
        title="stack commands", dest="stack_command", required=True, metavar="COMMAND"
    )

    up = commands.add_parser(
        "up",
        help="start the stack (harmless when it runs)",
        description="Start PostgreSQL and Mosquitto on free loopback ports (the same ones "
        "as last time when still free); creates them on first use. Running servers are left "
        "alone.",
    )
    up.add_argument(
        "--timescale",
        action="store_true",
        help="preload the TimescaleDB extension in PostgreSQL (remembered for later starts)",
    )
    up.add_argument(
        "--services",
        action="store_true",
        help="also start the API (with the portal) and an ingest worker in the background; "
        "they run until `ehealthlab stack down`",
    )
    up.add_argument(
        "--api-port",
        type=int,
        default=None,
        metavar="P",
        help="with --services: the API's port (default: EHEALTHLAB_API_PORT when free, else "
        "any free port)",
    )
    up.set_defaults(handler=run_up)

    down = commands.add_parser(
        "down",
        help="stop the stack (harmless when stopped)",
        description="Stop the background API and ingest worker (if started), Mosquitto (it "
        "saves its persistence) and PostgreSQL (fast mode). Data stays for the next `stack "
        "up`.",
    )
    down.add_argument(
        "--purge",
        action="store_true",
        help="also delete the servers' data, secrets and state file",
    )
    down.set_defaults(handler=run_down)

    status = commands.add_parser(
        "status",
        help="say what runs where",
        description="For each service: running, stopped or external, its address, pid and "
        "data directory (for the background API and ingest: their log).",
    )
    status.set_defaults(handler=run_status)

    env = commands.add_parser(
        "env",
        help="print export lines for the shell",
        description="Print `export EHEALTHLAB_...=...` lines for this stack: "
        'eval "$(ehealthlab stack env)". They contain secrets.',
    )
    env.set_defaults(handler=run_env)


def run_up(args: argparse.Namespace, settings: Settings) -> int:
    stack = LocalStack(settings)
    statuses = stack.up(timescale=args.timescale)
    if args.services:
        notes = {s.service: s.note for s in statuses}
        statuses = stack.start_services(api_port=args.api_port)
        # the servers' notes say what `up` did to them ("started"), not `start_services`
        statuses[:2] = [replace(s, note=notes.get(s.service, "")) for s in statuses[:2]]
    for line in format_status(statuses):
        print(line)
    print(f'state: {stack.state_dir}  (eval "$(ehealthlab stack env)" to use it)')
    return 0


def run_down(args: argparse.Namespace, settings: Settings) -> int:
    for line in format_status(LocalStack(settings).down(purge=args.purge)):
        print(line)
    return 0


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    for line in LocalStack(settings).status_lines():
        print(line)
    return 0


def run_env(args: argparse.Namespace, settings: Settings) -> int:
    for name, value in LocalStack(settings).env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0
