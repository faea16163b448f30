"""The demo's third chapter: what the pilot produced, written where CMTo and Grafana read it.

The pilot report (`evaluate --format html` of the simulated population), the evaluations the
FHIR MeasureReports and the pilot dashboard publish (`publish-evaluation`), and the Grafana
dashboards with their provisioning (`dashboards build`), after creating the dashboard roles
of the LAB and of each of the pilot's organisations (`dashboards roles create`). Their
passwords are written beside the provisioning, one file per role (mode 0600), where the
provisioning's `$__file{...}` reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from uuid import UUID

from ehealthlab.dashboards.build import build, store_database
from ehealthlab.dashboards.catalogue import DASHBOARDS
from ehealthlab.dashboards.roles import RoleCredentials, create_role, list_roles, rotate_password
from ehealthlab.evaluation.dataset import Period
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.publish import publish_evaluations
from ehealthlab.settings import Settings
from ehealthlab.simulators.onboarding import Onboarded
from ehealthlab.store.db import Connection, connect

POPULATION = "simulated"


@dataclass(frozen=True)
class Outputs:
    report: Path
    evaluations: int
    dashboards: Path
    dashboard_files: list[Path]
    grafana_organisations: int


def write_outputs(settings: Settings, period: Period, onboarded: Onboarded, out: Path) -> Outputs:
    out.mkdir(parents=True, exist_ok=True)
    # matplotlib loads only for the report
    from ehealthlab.evaluation.report import build_report  # noqa: PLC0415

    with connect(settings) as conn:
        data = fetch_dataset(conn, period, POPULATION)
    report = out / "pilot-report.html"
    report.write_text(build_report(data, settings), encoding="utf-8")
    del data
    with connect(settings) as conn:
        saved = publish_evaluations(conn, settings, period, POPULATION)
    dashboards = out / "dashboards"
    secrets = dashboards / "secrets"
    with connect(settings, autocommit=True) as conn:
        for credentials in _dashboard_roles(conn, onboarded):
            _write_secret(secrets / credentials.role_name, credentials.password)
        database = store_database(conn, settings.require_database_url(), None, None)
        built = build(
            dashboards, conn, database,
            dashboards_path=PurePosixPath(dashboards / "dashboards"),
            secrets_path=PurePosixPath(secrets),
        )  # fmt: skip
    assert len(built.dashboards) == len(DASHBOARDS)  # noqa: S101 - build writes each one
    return Outputs(report, len(saved), dashboards, built.dashboards, len(built.organisations))


def _dashboard_roles(conn: Connection, onboarded: Onboarded) -> list[RoleCredentials]:
    """The lab role (its password replaced when it exists: this run needs to know it) and
    one role per organisation of the pilot."""
    lab = next((r for r in list_roles(conn) if r.kind == "lab" and r.exists), None)
    made = [rotate_password(conn, lab.role_name) if lab is not None else create_role(conn, None)]
    for organisation in onboarded.organisations.values():
        made.append(create_role(conn, UUID(organisation["id"])))
    return made


def _write_secret(path: Path, password: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(password)
