"""`ehealthlab demo`: the pilot end to end on the local stack.

For now: start the stack, build the store, load the reference data and say what runs where.
Later issues grow it into the full pilot (gateway, simulated devices, ingest, evaluation,
dashboards).
"""

from __future__ import annotations

import argparse
from typing import Any

from ehealthlab.settings import Settings
from ehealthlab.stack.local import LocalStack, settings_with_stack
from ehealthlab.store.db import connect
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pilot end to end on the local stack",
        description="Start the local PostgreSQL and Mosquitto (unless EHEALTHLAB_DATABASE_URL "
        "/ EHEALTHLAB_MQTT_HOST point elsewhere), build the store, load the reference data "
        "and print what runs where.",
    )
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    stack = LocalStack(settings)
    stack.up()
    settings = settings_with_stack(settings)
    with connect(settings, autocommit=True) as conn:
        report = migrate(conn, settings.store_form)
        municipalities = load_municipalities(conn)
        by_area: dict[str, int] = {
            str(area): int(count)
            for area, count in conn.execute(
                "SELECT area, count(*) FROM municipalities GROUP BY area"
            ).fetchall()
        }
    print(
        f"store: {report.form} form, {municipalities} municipalities "
        f"({by_area.get('inner', 0)} inner areas, {by_area.get('centre', 0)} centres)"
    )
    for line in stack.status_lines():
        print(line)
    print('next: eval "$(ehealthlab stack env)" to point your shell at this stack')
    return 0
