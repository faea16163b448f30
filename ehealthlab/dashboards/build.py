"""`ehealthlab dashboards build --out DIR`: the dashboards' JSON and Grafana's provisioning
files, written from code (`catalogue.py`) and from the store's dashboard roles.

    DIR/dashboards/<kind>/<name>.json           the dashboards, one folder per kind
    DIR/provisioning/datasources/ehealthlab.yaml one data source per Grafana organisation
    DIR/provisioning/dashboards/ehealthlab.yaml  each organisation's dashboards folder
    DIR/organisations.json                      the Grafana organisations the files assume

Everything is rewritten on every build, byte for byte the same when nothing changed (sorted
keys), so the folder can be synchronised to Grafana's host or kept under version control.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ehealthlab.dashboards import provisioning
from ehealthlab.dashboards.catalogue import DASHBOARDS, names_by_kind
from ehealthlab.dashboards.panels import to_json
from ehealthlab.dashboards.roles import list_roles
from ehealthlab.dashboards.roles_command import register_roles
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules, load_rules
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import Connection, connect


@dataclass(frozen=True)
class BuildReport:
    dashboards: list[Path]
    organisations: list[provisioning.GrafanaOrganisation]
    without_role: list[str]  # organisations that have no dashboard role yet


def write_dashboards(out: Path, rules: AlertRules = DEFAULT_RULES) -> list[Path]:
    written = []
    for entry in DASHBOARDS:
        path = out / "dashboards" / entry.kind / f"{entry.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_json(entry.build(rules)), encoding="utf-8")
        written.append(path)
    return written


def store_database(
    conn: Connection, url: str, host: str | None, port: int | None
) -> provisioning.Database:
    """The store as Grafana will reach it: the URL's host and port unless told otherwise."""
    parts = urlsplit(url)
    row = conn.execute("SELECT current_database(), ehl_store_form()").fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns its row
    return provisioning.Database(
        host=host or parts.hostname or "127.0.0.1",
        port=port or parts.port or 5432,
        name=str(row[0]),
        timescaledb=row[1] == "timescale",
    )


def build(
    out: Path,
    conn: Connection,
    database: provisioning.Database,
    *,
    dashboards_path: PurePosixPath = provisioning.DEFAULT_DASHBOARDS_PATH,
    secrets_path: PurePosixPath = provisioning.DEFAULT_SECRETS_PATH,
    rules: AlertRules = DEFAULT_RULES,
) -> BuildReport:
    dashboards = write_dashboards(out, rules)
    roles = [r for r in list_roles(conn) if r.registered and r.exists and r.can_login]
    orgs = provisioning.organisations(
        [
            (
                r.kind,
                r.role_name,
                str(r.organisation_id) if r.organisation_id else None,
                r.organisation_name,
            )
            for r in roles
        ]
    )
    with_role = {str(r.organisation_id) for r in roles if r.organisation_id}
    without_role = [
        f"{name} ({kind}, {org_id})"
        for org_id, name, kind in conn.execute(
            "SELECT id, name, kind FROM organisations WHERE kind IN ('provider', 'startup')"
            " ORDER BY kind, name"
        ).fetchall()
        if str(org_id) not in with_role
    ]
    if not any(o.kind == "lab" for o in orgs):
        without_role.insert(0, "the LAB (lab role: ehealthlab dashboards roles create --lab)")
    files: dict[Path, str] = {
        out / "provisioning" / "datasources" / "ehealthlab.yaml": provisioning.to_yaml(
            provisioning.datasource_file(orgs, database, secrets_path)
        ),
        out / "provisioning" / "dashboards" / "ehealthlab.yaml": provisioning.to_yaml(
            provisioning.dashboards_file(orgs, names_by_kind(), dashboards_path)
        ),
        out / "organisations.json": json.dumps(
            provisioning.organisations_file(orgs), indent=2, sort_keys=True
        )
        + "\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return BuildReport(dashboards, orgs, without_role)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "dashboards",
        help="Grafana dashboards as code, their provisioning and database roles",
        description="Build the Grafana dashboards and provisioning files; manage the "
        "database roles their data sources log in as (docs/dashboards.md).",
    )
    commands = parser.add_subparsers(
        title="dashboards commands", dest="dashboards_command", required=True, metavar="COMMAND"
    )
    build_parser = commands.add_parser(
        "build",
        help="write the dashboards' JSON and Grafana's provisioning files",
        description="Writes DIR/dashboards/<kind>/*.json, DIR/provisioning/{datasources,"
        "dashboards}/ehealthlab.yaml and DIR/organisations.json from the code and the "
        "store's dashboard roles.",
    )
    build_parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    build_parser.add_argument(
        "--grafana-dashboards-path", type=PurePosixPath, metavar="PATH",
        default=provisioning.DEFAULT_DASHBOARDS_PATH,
        help="where DIR/dashboards will be on Grafana's host (default: %(default)s)",
    )  # fmt: skip
    build_parser.add_argument(
        "--secrets-path", type=PurePosixPath, metavar="PATH",
        default=provisioning.DEFAULT_SECRETS_PATH,
        help="folder on Grafana's host holding one file per role with its password "
        "(default: %(default)s)",
    )  # fmt: skip
    build_parser.add_argument(
        "--database-host", metavar="HOST",
        help="the store's host as Grafana reaches it (default: the URL's)",
    )  # fmt: skip
    build_parser.add_argument("--database-port", type=int, metavar="PORT")
    build_parser.add_argument(
        "--alert-rules", type=Path, metavar="FILE",
        help="the alert rules ingest runs, whose thresholds the provider dashboard draws "
        "(default: EHEALTHLAB_ALERT_RULES, else the built-in rules)",
    )  # fmt: skip
    build_parser.set_defaults(handler=run_build)
    register_roles(commands)


def run_build(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    rules_file = args.alert_rules or settings.alert_rules
    rules = DEFAULT_RULES if rules_file is None else load_rules(rules_file)
    with connect(settings) as conn:
        database = store_database(
            conn, settings.require_database_url(), args.database_host, args.database_port
        )
        report = build(
            args.out, conn, database,
            dashboards_path=args.grafana_dashboards_path, secrets_path=args.secrets_path,
            rules=rules,
        )  # fmt: skip
    print(f"wrote {len(report.dashboards)} dashboards and provisioning for "
          f"{len(report.organisations)} Grafana organisations in {args.out}")  # fmt: skip
    for org in report.organisations:
        print(f"  org {org.org_id}: {org.name} -> role {org.role_name}")
    for missing in report.without_role:
        print(f"  no dashboard role yet, not provisioned: {missing}", file=sys.stderr)
    return 0
