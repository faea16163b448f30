"""Grafana provisioning files for a stock Grafana 11 or 12: one Grafana organisation per
health provider and per start-up, each with one PostgreSQL data source that logs in as that
organisation's own database role, and the dashboards of its kind; the LAB's organisation
(Grafana's first, "Main Org.") has the lab role and the operations and pilot dashboards.

Pure: organisations and roles in, file contents out (`build.py` reads the store and writes).
Grafana provisions data sources and dashboards into organisations that exist; it does not
create organisations from files, so `organisations.json` lists the ids these files assume,
in the order Grafana's API must create them (docs/dashboards.md).

Passwords are never written here: each data source reads its role's password from a file
(`$__file{...}`) that the operator fills with what `ehealthlab dashboards roles create`
printed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from ehealthlab.dashboards.panels import DATASOURCE_TYPE, datasource_uid
from ehealthlab.dashboards.roles import CONNECTION_LIMITS, Kind

#: Grafana's first organisation, which every Grafana has: the LAB's (operators and CMTo)
LAB_ORG_ID = 1
LAB_ORG_NAME = "E-health Territorial LAB"
#: where Grafana finds what `dashboards build` wrote, on the Grafana host
DEFAULT_DASHBOARDS_PATH = PurePosixPath("/var/lib/grafana/dashboards/ehealthlab")
DEFAULT_SECRETS_PATH = PurePosixPath("/etc/grafana/ehealthlab-secrets")


@dataclass(frozen=True)
class GrafanaOrganisation:
    """A Grafana organisation and the database role its data source logs in as."""

    org_id: int
    name: str
    kind: Kind
    role_name: str
    organisation_id: str | None  # the platform's organisation; None for the LAB


@dataclass(frozen=True)
class Database:
    """The store as Grafana's server reaches it."""

    host: str
    port: int
    name: str
    timescaledb: bool
    sslmode: str = "disable"


def organisations(roles: Sequence[tuple[Kind, str, str | None, str | None]]) -> list[
    GrafanaOrganisation
]:  # fmt: skip
    """Grafana organisations for (kind, role name, organisation id, organisation name) rows:
    the lab first (id 1), then providers and start-ups by name and id, numbered from 2 —
    stable as long as no organisation is inserted before another, which is why the list is
    written out for the operator instead of being recomputed on the Grafana side."""
    found = []
    lab = [r for r in roles if r[0] == "lab"]
    for kind, role, _org, _name in lab[:1]:
        found.append(GrafanaOrganisation(LAB_ORG_ID, LAB_ORG_NAME, kind, role, None))
    others = sorted(
        (r for r in roles if r[0] != "lab" and r[2] is not None),
        key=lambda r: (r[0], r[3] or "", r[2] or ""),
    )
    for number, (kind, role, org, name) in enumerate(others, start=LAB_ORG_ID + 1):
        found.append(GrafanaOrganisation(number, f"{name} ({kind})", kind, role, org))
    return found


def datasource_file(
    orgs: Sequence[GrafanaOrganisation],
    database: Database,
    secrets_path: PurePosixPath = DEFAULT_SECRETS_PATH,
) -> dict[str, Any]:
    """provisioning/datasources/ehealthlab.yaml: one data source per organisation, all with
    the uid of their kind, so one dashboard JSON serves every organisation of a kind."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "ehealthlab",
                "type": DATASOURCE_TYPE,
                "uid": datasource_uid(org.kind),
                "orgId": org.org_id,
                "access": "proxy",
                "url": f"{database.host}:{database.port}",
                "user": org.role_name,
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "database": database.name,
                    "sslmode": database.sslmode,
                    "postgresVersion": 1500,
                    "timescaledb": database.timescaledb,
                    # the role refuses more sessions than its limit (roles.py)
                    "maxOpenConns": CONNECTION_LIMITS[org.kind],
                    "maxIdleConns": CONNECTION_LIMITS[org.kind],
                    "connMaxLifetime": 14400,
                    "timeInterval": "1m",
                },
                "secureJsonData": {"password": f"$__file{{{secrets_path / org.role_name}}}"},
            }
            for org in orgs
        ],
    }


def dashboards_file(
    orgs: Sequence[GrafanaOrganisation],
    dashboards_by_kind: Mapping[Kind, Sequence[str]],
    dashboards_path: PurePosixPath = DEFAULT_DASHBOARDS_PATH,
) -> dict[str, Any]:
    """provisioning/dashboards/ehealthlab.yaml: each organisation loads the folder of its
    kind's dashboards, read-only (a change is made in code and rebuilt)."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": f"ehealthlab-{org.org_id}",
                "orgId": org.org_id,
                "folder": "ehealthlab",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {
                    "path": str(dashboards_path / org.kind),
                    "foldersFromFilesStructure": False,
                },
            }
            for org in orgs
            if dashboards_by_kind.get(org.kind)
        ],
    }


def organisations_file(orgs: Sequence[GrafanaOrganisation]) -> list[dict[str, Any]]:
    """organisations.json: what the files above assume exists in Grafana."""
    return [
        {"orgId": o.org_id, "name": o.name, "kind": o.kind, "role": o.role_name,
         "organisation_id": o.organisation_id}
        for o in orgs
    ]  # fmt: skip


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=True, default_flow_style=False, allow_unicode=True)
