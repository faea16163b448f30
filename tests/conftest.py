"""Fixtures shared by the suite: real servers come from the `servers` plugin; this file
turns them into databases for tests of the store, on both physical forms.

The plain PostgreSQL form always runs, on a private server started for the session. The
TimescaleDB form runs too when EHEALTHLAB_TEST_TIMESCALE_URL names a server with the
extension loaded (a superuser URL: tests create and drop databases on it).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path

import psycopg
import pytest
from api_fixtures import (
    API_PATIENT_KEY,
    app_client,
    create_database,
    drop_database,
    make_settings,
    template_copy,
    with_database,
)
from fastapi.testclient import TestClient
from hypothesis import settings as hypothesis_settings

from ehealthlab.api.client import GatewayClient
from ehealthlab.contract.pilot_time import pilot_day
from ehealthlab.dashboards.roles import RoleCredentials, create_role, list_roles, revoke_role
from ehealthlab.demo import LocalServices
from ehealthlab.evaluation.dataset import Period
from ehealthlab.evaluation.publish import publish_evaluations
from ehealthlab.gateway.admin import bootstrap_operator
from ehealthlab.settings import Settings
from ehealthlab.simulators.measurement_stream import pilot_measurements
from ehealthlab.simulators.onboarding import Onboarded, onboard
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.runner import PilotRun
from ehealthlab.simulators.scenario import load_scenario
from ehealthlab.store.db import connect
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities

#: re-exported: modules import these from conftest
__all__ = ["API_PATIENT_KEY", "create_database", "drop_database", "with_database"]

pytest_plugins = ["servers", "scheduling"]

# In CI (CI=true) hypothesis replays a fixed sequence of examples, so a submission never fails
# on a draw the author never saw; locally it keeps exploring (and its database remembers).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

TIMESCALE_URL_VARIABLE = "EHEALTHLAB_TEST_TIMESCALE_URL"


@pytest.fixture(scope="session")
def plain_admin_url(postgres_server) -> str:
    return postgres_server.url("postgres")


@pytest.fixture(scope="session")
def migrated_template(plain_admin_url: str) -> str:
    """A database migrated once per session (plain form) that tests copy as a template."""
    name = create_database(plain_admin_url)
    with psycopg.connect(with_database(plain_admin_url, name), autocommit=True) as conn:
        migrate(conn, "plain")
        load_municipalities(conn)
    return name


def migrated_store(request: pytest.FixtureRequest, form: str) -> tuple[str, str]:
    """A new database of `form` with the municipalities: (admin URL, name). Skips the
    TimescaleDB form when no server with the extension is named."""
    if form == "plain":
        admin_url = request.getfixturevalue("plain_admin_url")
        name = create_database(admin_url, template=request.getfixturevalue("migrated_template"))
    else:
        admin_url = os.environ.get(TIMESCALE_URL_VARIABLE, "")
        if not admin_url:
            pytest.skip(f"{TIMESCALE_URL_VARIABLE} is not set: TimescaleDB form not tested")
        name = create_database(admin_url)
        with psycopg.connect(with_database(admin_url, name), autocommit=True) as conn:
            migrate(conn, "timescale")
            load_municipalities(conn)
    return admin_url, name


@pytest.fixture(params=["plain", "timescale"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A freshly migrated store of each physical form (TimescaleDB only when available)."""
    admin_url, name = migrated_store(request, request.param)
    try:
        yield with_database(admin_url, name)
    finally:
        drop_database(admin_url, name)


@pytest.fixture
def empty_database_url(plain_admin_url: str) -> Iterator[str]:
    """An empty database on the plain server, for tests of migrations themselves."""
    name = create_database(plain_admin_url)
    try:
        yield with_database(plain_admin_url, name)
    finally:
        drop_database(plain_admin_url, name)


# -- one application per test module, over its own copy of the migrated template -----------
# Built from `api_fixtures`; a module needing a variant calls its factories (make_settings with
# options, app_client, served, template_copy) rather than redefining these.


@pytest.fixture(scope="module")
def database_url(plain_admin_url: str, migrated_template: str) -> Iterator[str]:
    """The module's own migrated database, with the municipalities loaded."""
    with template_copy(plain_admin_url, migrated_template) as url:
        yield url


@pytest.fixture(scope="module")
def settings(database_url, mosquitto_broker, tmp_path_factory) -> Settings:
    """Settings for the module's database and the session's broker (no local stack)."""
    return settings_for(database_url, mosquitto_broker, tmp_path_factory)


def settings_for(database_url: str, broker, tmp_path_factory, **options) -> Settings:
    """`make_settings` with a fresh state directory from pytest's factory."""
    return make_settings(database_url, broker, tmp_path_factory.mktemp("no-stack"), **options)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    """The HTTP API over `settings`, started (pool, broker role, presence) for the module."""
    with app_client(settings) as test_client:
        yield test_client


# -- a pilot filled by the simulator, for the dashboards' tests -------------------------------

SMALL_PILOT = Path(__file__).parent / "data" / "small-pilot.toml"
#: the simulator's own demo week: 24 patients in four municipalities (A, D, E, F), an outage
DEMO_WEEK = Path(str(resources.files("ehealthlab.simulators") / "scenarios" / "demo-week.toml"))


@dataclass
class SimulatedPilot:
    """A store of one form that the simulator filled through the real API, broker and ingest
    — the demo week (the main provider and start-up, `period`) and, a month earlier, the small
    test pilot of a second provider and start-up — a mini-pilot of the week's start-up in
    Torino, Lanzo and Ala di Stura, the week's evaluations published, and one
    dashboard role per organisation plus the lab's. Shared by a session: read it, never
    change it."""

    form: str
    url: str
    period: Period
    #: what each run's onboarding created: [demo week, small pilot]
    runs: list[Onboarded]
    #: kind ("provider", "startup", "lab") -> the credentials of the demo week's organisation
    roles: dict[str, RoleCredentials] = field(default_factory=dict)
    #: every role made, by organisation id ("lab" for the lab's)
    all_roles: dict[str, RoleCredentials] = field(default_factory=dict)

    @property
    def timescaledb(self) -> bool:
        return self.form == "timescale"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def login(self, kind_or_organisation: str) -> psycopg.Connection:
        """A connection as a dashboard role, as Grafana's data source logs in: a kind names
        the demo week's organisation of that kind, an organisation id any other."""
        credentials = self.roles.get(kind_or_organisation) or self.all_roles[kind_or_organisation]
        return psycopg.connect(
            self.url,
            user=credentials.role_name,
            password=credentials.password,
            autocommit=True,
            connect_timeout=10,
        )


def _simulate(settings: Settings, api_url: str, scenario_file: Path, state_dir: Path):
    """One scenario through the API, broker and ingest; returns once all of it is stored."""
    scenario = load_scenario(scenario_file)
    patients = simulated_patients(scenario)
    expected = sum(len(i.measurement.values) for i in pilot_measurements(scenario, patients))
    operator = bootstrap_operator(settings)["token"]
    onboarded = onboard(GatewayClient(api_url, operator), patients, state_dir)
    PilotRun(scenario, patients, onboarded, state_dir, speed=None).run()
    devices = [d.device_id for d in onboarded.devices.values()]
    deadline = time.monotonic() + 120  # bounds a failure only
    with connect(settings) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM readings WHERE device_id = ANY(%s)", (devices,)
            ).fetchone()
            conn.rollback()
            if row is not None and row[0] >= expected:
                break
            assert time.monotonic() < deadline, f"{row} of {expected} readings stored"
            time.sleep(0.2)
    week = Period(pilot_day(scenario.starts_at), pilot_day(scenario.ends_at) + timedelta(1))
    return onboarded, week


@pytest.fixture(scope="session", params=["plain", "timescale"])
def simulated_pilot(
    request: pytest.FixtureRequest, mosquitto_broker, tmp_path_factory
) -> Iterator[SimulatedPilot]:
    admin_url, name = migrated_store(request, request.param)
    url = with_database(admin_url, name)
    settings = settings_for(url, mosquitto_broker, tmp_path_factory)
    try:
        with LocalServices(settings) as services:
            runs = [
                _simulate(settings, services.api_url, scenario, tmp_path_factory.mktemp("run"))
                for scenario in (DEMO_WEEK, SMALL_PILOT)
            ]
            week, startup = runs[0][1], runs[0][0].organisations["Alpi Digital Health"]["id"]
            operator = GatewayClient(services.api_url, bootstrap_operator(settings)["token"])
            operator.post("/api/v1/mini-pilots", {  # the week's start-up, Balme left out
                "name": "Valli di Lanzo and Torino", "startups": [startup],
                "municipalities": ["001272", "001128", "001003"],
                "start": week.start.isoformat(), "end": (week.end - timedelta(1)).isoformat(),
            })  # fmt: skip
        period = runs[0][1]
        pilot = SimulatedPilot(request.param, url, period, [onboarded for onboarded, _ in runs])
        with connect(settings) as conn:
            publish_evaluations(conn, settings, period, "simulated")
            conn.commit()
        with pilot.admin() as conn:
            for run in pilot.runs:
                for organisation in run.organisations.values():
                    credentials = create_role(conn, uuid.UUID(organisation["id"]))
                    pilot.all_roles[organisation["id"]] = credentials
                    pilot.roles.setdefault(credentials.kind, credentials)
            pilot.roles["lab"] = pilot.all_roles["lab"] = create_role(conn, None)
        yield pilot
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for role in list_roles(conn):
                revoke_role(conn, role.role_name)
        drop_database(admin_url, name)
