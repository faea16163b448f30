"""The `ehealthlab` command: one entry point, one subcommand module per component.

Each component registers its own subcommands (`register(subparsers)`), setting a handler
`(args, settings) -> int`. Errors of the platform's tree become one line on stderr and the
error's exit status; a wrong argument is one line and status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pydantic import ValidationError

from ehealthlab import __version__, demo
from ehealthlab.api import commands as api_commands
from ehealthlab.dashboards import build as dashboards_build
from ehealthlab.errors import ConfigurationError, EhealthlabError
from ehealthlab.evaluation import commands as evaluation_commands
from ehealthlab.evaluation import publish, replay_command, sus_command
from ehealthlab.gateway import admin as gateway_admin
from ehealthlab.gateway import conformance_command
from ehealthlab.ingest import commands as ingest_commands
from ehealthlab.settings import Settings
from ehealthlab.simulators import commands as simulator_commands
from ehealthlab.stack import commands as stack_commands
from ehealthlab.store import commands as store_commands

Handler = Callable[[argparse.Namespace, Settings], int]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`ehealthlab: ...`) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ehealthlab",
        description="E-health Territorial LAB: devices, store, FHIR and pilot evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"ehealthlab {__version__}")
    subparsers = parser.add_subparsers(
        title="commands",
        dest="command",
        required=True,
        parser_class=OneLineParser,
        metavar="COMMAND",
    )
    stack_commands.register(subparsers)
    store_commands.register(subparsers)
    ingest_commands.register(subparsers)
    gateway_admin.register(subparsers)
    api_commands.register(subparsers)
    conformance_command.register(subparsers)
    simulator_commands.register(subparsers)
    evaluation_commands.register(subparsers)
    publish.register(subparsers)
    dashboards_build.register(subparsers)
    replay_command.register(subparsers)
    sus_command.register(subparsers)
    demo.register(subparsers)
    return parser


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "EHEALTHLAB_" + "_".join(str(p) for p in first["loc"]).upper()
        raise ConfigurationError(f"{name}: {first['msg']}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, load_settings())
    except EhealthlabError as exc:
        print(f"ehealthlab: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
