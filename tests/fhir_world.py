"""The world that the FHIR REST API's server tests read and search, and the oracle of their
answers: a real uvicorn server over a real PostgreSQL and Mosquitto, one per module that
imports the module-scoped `world` fixture, on each physical form of the store (TimescaleDB
only when available).

The world: two start-ups (a, b) and two providers (p, q); p's patient P1 wears a's blood-
pressure monitor and oximeter, p's patient P2 b's monitor, q's patient Q1 b's scale, and a's
thermometer is enrolled with nobody (unassigned readings). Expected answers come from an
oracle built from the stored rows with rows.group_measurements and fast.py, independently of
the SQL under test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import httpx2
import psycopg
import pytest
from api_fixtures import served
from conftest import drop_database, migrated_store, settings_for, with_database
from fhir.resources.R4B.operationoutcome import OperationOutcome
from gateway_fixtures import run_admin
from hypothesis import strategies as st

from ehealthlab.fhir.mapping import fast
from ehealthlab.fhir.mapping.rows import BloodPressureReadings, ReadingRecord, group_measurements
from ehealthlab.fhir.search.parameters import PARAMETERS
from ehealthlab.settings import Settings
from ehealthlab.store.readings import ReadingRow, ReadingWriter

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
T0 = datetime(2026, 2, 1, 7, 0, tzinfo=UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# -- generated queries, for the parser and the server alike --------------------------------

PARAMETER_NAMES = sorted(
    {p.name for ps in PARAMETERS.values() for p in ps}
    | {"_count", "_sort", "_summary", "_total", "_cursor", "max", "other"}
)
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


# -- the world ----------------------------------------------------------------------------------


@dataclass
class World:
    url: str
    tokens: dict[str, str]
    organisations: dict[str, str]
    devices: dict[str, str] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    #: every stored reading, as the mapping reads it
    readings: list[ReadingRecord] = field(default_factory=list)
    boundary: dict[str, str] = field(default_factory=dict)  # label -> Observation id
    http: httpx2.Client | None = None

    @property
    def fhir(self) -> str:
        return self.url + "/fhir"

    def get(self, who: str, path: str, params=None, headers=None) -> httpx2.Response:
        assert self.http is not None
        auth = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return self.http.get(self.fhir + path, params=params, headers={**auth, **(headers or {})})

    def ok(self, who: str, path: str, params=None, headers=None) -> dict:
        answer = self.get(who, path, params, headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == FHIR_JSON
        return answer.json()


def _post(http: httpx2.Client, url: str, token: str, path: str, body: dict) -> dict:
    answer = http.post(url + path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.text
    return answer.json()


def _reading(
    device: str,
    metric: str,
    at: datetime,
    value: float,
    seq: int,
    *,
    skew: timedelta = timedelta(0),
) -> ReadingRow:
    return ReadingRow(
        device_id=device,
        metric=metric,
        at=at,
        value=value,
        measured_at=at + skew,
        received_at=at + skew + timedelta(seconds=30),
        seq=seq,
        msg_id=f"m{seq}",
        clock_offset_s=skew.total_seconds(),
        clock_corrected=bool(skew),
    )


def _measurements(devices: dict[str, str]) -> list[ReadingRow]:
    rows: list[ReadingRow] = []
    seq = iter(range(1, 10**6))
    for i in range(80):  # P1's cuff: some panels lack a half; some clocks were wrong
        at = T0 + timedelta(hours=9 * i, minutes=i % 7)
        skew = timedelta(seconds=400) if i % 11 == 3 else timedelta(0)
        if i % 19 != 7:
            rows.append(
                _reading(devices["bp"], "bp_systolic", at, 120 + i % 30, next(seq), skew=skew)
            )
        if i % 17 != 5:
            rows.append(
                _reading(devices["bp"], "bp_diastolic", at, 75 + i % 15, next(seq), skew=skew)
            )
        rows.append(_reading(devices["bp"], "heart_rate", at, 60 + i % 20, next(seq), skew=skew))
    # one inflation whose halves came with different clock corrections: a day apart
    rows.append(_reading(devices["bp"], "bp_systolic", SPLIT, 140, next(seq)))
    rows.append(
        _reading(devices["bp"], "bp_diastolic", SPLIT, 90, next(seq), skew=timedelta(days=1))
    )
    for i in range(40):  # P1's oximeter, at the cuff's times: ties on effective time
        at = T0 + timedelta(hours=9 * i, minutes=i % 7)
        rows.append(_reading(devices["ox"], "spo2", at, 95 + i % 4, next(seq)))
        rows.append(_reading(devices["ox"], "heart_rate", at, 70 + i % 9, next(seq)))
    for i in range(20):  # P2, on start-up b's cuff
        at = T0 + timedelta(hours=13 * i)
        rows.append(_reading(devices["bp2"], "bp_systolic", at, 130 + i, next(seq)))
        rows.append(_reading(devices["bp2"], "bp_diastolic", at, 80 + i, next(seq)))
    for i in range(30):  # Q1, provider q's patient
        rows.append(
            _reading(devices["scale"], "body_weight", T0 + timedelta(days=i), 80.5, next(seq))
        )
    for i in range(15):  # nobody's: unassigned
        rows.append(
            _reading(
                devices["thermo"], "body_temperature", T0 + timedelta(hours=5 * i), 36.6, next(seq)
            )
        )
    return rows


#: the `at` of a panel whose diastolic half was clock-corrected by a day
SPLIT = utc(2026, 3, 20, 8)
#: oximeter readings around Europe/Rome's 10 March 2026 (UTC+1), for date precision
BOUNDARY = {
    "B1": utc(2026, 3, 9, 22, 59, 59),  # Rome 9 March 23:59:59
    "B2": utc(2026, 3, 9, 23),  # Rome 10 March 00:00
    "B3": utc(2026, 3, 10, 12),
    "B4": datetime(2026, 3, 10, 22, 59, 59, 999999, tzinfo=UTC),  # Rome 10 March, last µs
    "B5": utc(2026, 3, 10, 23),  # Rome 11 March 00:00
}


@pytest.fixture(scope="module", params=["plain", "timescale"])
def world(request, mosquitto_broker, tmp_path_factory) -> Iterator[World]:
    """The API over a store of each physical form (TimescaleDB only when available)."""
    admin_url, name = migrated_store(request, request.param)
    database_url = with_database(admin_url, name)
    settings_ = settings_for(database_url, mosquitto_broker, tmp_path_factory)
    try:
        with served(settings_) as url, httpx2.Client(timeout=30) as http:
            yield _populate(url, http, settings_, database_url)
    finally:
        drop_database(admin_url, name)


def _populate(url: str, http: httpx2.Client, settings_: Settings, database_url: str) -> World:
    operator = run_admin(settings_, "admin", "bootstrap")
    world = World(
        url, {"operator": operator["token"]}, {"operator": operator["organisation_id"]}, http=http
    )
    for who, kind in (("a", "startup"), ("b", "startup"), ("p", "provider"), ("q", "provider")):
        made = _post(
            http,
            url,
            operator["token"],
            "/api/v1/organisations",
            {"kind": kind, "name": f"{kind} {who}"},
        )
        world.tokens[who], world.organisations[who] = made["token"], made["id"]
    for key, owner, device_type in (
        ("bp", "a", "blood_pressure_monitor"),
        ("ox", "a", "pulse_oximeter"),
        ("thermo", "a", "thermometer"),
        ("bp2", "b", "blood_pressure_monitor"),
        ("scale", "b", "weighing_scale"),
    ):
        made = _post(
            http,
            url,
            world.tokens[owner],
            "/api/v1/devices",
            {"type": device_type, "model": "M-1", "serial": key},
        )
        world.devices[key] = made["device_id"]
    for key, provider in (("P1", "p"), ("P2", "p"), ("Q1", "q")):
        made = _post(
            http,
            url,
            world.tokens[provider],
            "/api/v1/patients",
            {"identifier": f"id-{key}", "label": key},
        )
        world.patients[key] = made["id"]
    for device, patient, provider, plan in (
        ("bp", "P1", "p", {"bp_systolic": 2}),
        ("ox", "P1", "p", {"spo2": 1}),
        ("bp2", "P2", "p", {"bp_systolic": 1}),
        ("scale", "Q1", "q", {"body_weight": 1}),
    ):
        _post(
            http,
            url,
            world.tokens[provider],
            "/api/v1/enrolments",
            {
                "patient_id": world.patients[patient],
                "device_id": world.devices[device],
                "municipality": "001272",
                "start": "2026-01-01",
                "end": None,
                "care_plan": plan,
            },
        )
    rows = _measurements(world.devices)
    rows += [
        _reading(world.devices["ox"], "spo2", at, 97, 900 + i)
        for i, at in enumerate(BOUNDARY.values())
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        ReadingWriter(conn).write(rows)
        conn.execute(
            "UPDATE organisations SET fls_code = '010203' WHERE id = %s",
            (world.organisations["q"],),
        )
        stored = conn.execute(
            "SELECT r.device_id, d.device_type, r.metric, r.at, r.value, r.measured_at,"
            " r.received_at, r.clock_corrected, r.patient_id, p.organisation_id"
            " FROM readings r JOIN devices d USING (device_id)"
            " LEFT JOIN patients p ON p.id = r.patient_id"
        ).fetchall()
    world.readings = [ReadingRecord(*row) for row in stored]
    for label, at in BOUNDARY.items():
        world.boundary[label] = (
            f"{world.devices['ox']}.spo2.{(at - utc(1970, 1, 1)) // timedelta(microseconds=1)}"
        )
    return world


# -- the oracle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    id: str
    resource: dict
    effective: datetime
    key: tuple
    code: str  # the Observation's code: a metric, or blood_pressure
    device_type: str
    device_id: str
    patient_id: uuid.UUID | None
    provider_id: uuid.UUID | None


def oracle(
    world: World, visible: Callable[[ReadingRecord], bool] = lambda r: True
) -> list[Expected]:
    """Every Observation the readings make, newest first (the API's default order)."""
    entries = []
    for source in group_measurements(world.readings):
        principal = source.principal if isinstance(source, BloodPressureReadings) else source
        if not visible(principal):
            continue
        resource = fast.observation_json(source)
        code = (
            "blood_pressure"
            if isinstance(source, BloodPressureReadings)
            or principal.metric in ("bp_systolic", "bp_diastolic")
            else principal.metric
        )
        key = (principal.measured_at, principal.device_id, principal.metric, principal.at)
        entries.append(
            Expected(
                resource["id"],
                resource,
                principal.measured_at,
                key,
                code,
                principal.device_type,
                principal.device_id,
                principal.patient_id,
                principal.provider_id,
            )
        )
    entries.sort(key=lambda e: e.key, reverse=True)
    return entries


def of_patient(world: World, *labels: str) -> list[Expected]:
    patients = {uuid.UUID(world.patients[label]) for label in labels}
    return oracle(world, lambda r: r.patient_id in patients)


def ids(bundle: dict) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def walk(
    world: World, who: str, path: str, params, *, relation: str = "next", start=None
) -> list[dict]:
    """Every page, following `relation` links from the first (or `start`)."""
    pages = [start or world.ok(who, path, params)]
    while True:
        link = {link["relation"]: link["url"] for link in pages[-1]["link"]}.get(relation)
        if link is None:
            return pages
        assert link.startswith(world.fhir + path + "?"), link
        pages.append(world.ok(who, path, parse_qsl(urlsplit(link).query)))
        assert len(pages) < 1000


def assert_outcome(answer: httpx2.Response, status: int, *, mentions: str = "") -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == FHIR_JSON
    body = answer.json()
    OperationOutcome.model_validate(body)
    assert mentions in body["issue"][0]["diagnostics"], body
    return body
