"""The FHIR REST API at /fhir: parsing (pure, table-driven and generated), then a real uvicorn
server over a real PostgreSQL and Mosquitto, read and searched by plain HTTP and by fhirpy.

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
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import httpx2
import psycopg
import pytest
from api_fixtures import served
from conftest import drop_database, migrated_store, settings_for, with_database
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhirpy import SyncFHIRClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gateway_api import run_admin

from ehealthlab.errors import PermissionDeniedError
from ehealthlab.fhir import access
from ehealthlab.fhir.mapping import fast
from ehealthlab.fhir.mapping.ids import observation_identifier
from ehealthlab.fhir.mapping.rows import BloodPressureReadings, ReadingRecord, group_measurements
from ehealthlab.fhir.search import observations
from ehealthlab.fhir.search.criteria import MetricMatch, SearchParameterError
from ehealthlab.fhir.search.cursors import Cursor, decode_cursor, encode_cursor, micros
from ehealthlab.fhir.search.dates import parse_date
from ehealthlab.fhir.search.parameters import PARAMETERS
from ehealthlab.fhir.search.query import parse_lastn, parse_search, strict_handling
from ehealthlab.settings import Settings
from ehealthlab.store.readings import ReadingRow, ReadingWriter

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
ROME_WINTER = timezone(timedelta(hours=1))
T0 = datetime(2026, 2, 1, 7, 0, tzinfo=UTC)
SECRET = b"k" * 32

# -- pure: dates ------------------------------------------------------------------------------


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "prefix", "lower", "upper"),
    [
        # a date without a zone is a day (month, year) in Europe/Rome
        ("2026-03-10", "eq", utc(2026, 3, 9, 23), utc(2026, 3, 10, 23)),
        ("ge2026-03-10", "ge", utc(2026, 3, 9, 23), utc(2026, 3, 10, 23)),
        ("2026-03", "eq", utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)),  # DST starts 29 March
        ("2026", "eq", utc(2025, 12, 31, 23), utc(2026, 12, 31, 23)),
        ("lt2026-07-01", "lt", utc(2026, 6, 30, 22), utc(2026, 7, 1, 22)),
        ("2026-03-10T12:00Z", "eq", utc(2026, 3, 10, 12), utc(2026, 3, 10, 12, 1)),
        ("2026-03-10T12:00:05Z", "eq", utc(2026, 3, 10, 12, 0, 5), utc(2026, 3, 10, 12, 0, 6)),
        (
            "2026-03-10T12:00:05.25+01:00",
            "eq",
            datetime(2026, 3, 10, 11, 0, 5, 250000, tzinfo=UTC),
            datetime(2026, 3, 10, 11, 0, 5, 260000, tzinfo=UTC),
        ),
        ("ne2026-03-10T12:00", "ne", utc(2026, 3, 10, 11), utc(2026, 3, 10, 11, 1)),
        ("sa2026-03-10T12:00-05:00", "sa", utc(2026, 3, 10, 17), utc(2026, 3, 10, 17, 1)),
        ("9999", "eq", datetime(9998, 12, 31, 23, tzinfo=UTC), None),
    ],
)
def test_dates_are_ranges_at_their_precision(value, prefix, lower, upper):
    parsed = parse_date(value)
    assert (parsed.prefix, parsed.lower, parsed.upper) == (prefix, lower, upper)


@pytest.mark.parametrize(
    "value",
    [
        "2026-3-10",
        "2026-13-01",
        "2026-02-30",
        "ap2026",
        "xx2026",
        "2026-03-10T25:00Z",
        "2026-03-10Z",
        "2026-03-10T12:00+15:00",
        "0000",
        "today",
        "",
        "2026-03-10T12",
    ],
)
def test_malformed_dates_are_refused(value):
    with pytest.raises((ValueError, SearchParameterError)):
        parse_date(value)


# -- pure: codes, references, handling --------------------------------------------------------

BP_MATCH = MetricMatch(frozenset({"bp_systolic", "bp_diastolic"}))


def observation_values(**params: str) -> tuple:
    query = parse_search("Observation", list(params.items()), base_url="http://x/fhir")
    return query.clauses[0].values


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("85354-9", {BP_MATCH}),
        (f"{LOINC}|85354-9", {BP_MATCH}),
        (f"{LOINC}|8480-6", {BP_MATCH}),
        ("8462-4", {BP_MATCH}),
        (f"{MDC}|150020", {BP_MATCH}),
        (f"{MDC}|150021", {BP_MATCH}),
        ("|85354-9", set()),
        ("http://snomed.info/sct|85354-9", set()),
        ("1234-5", set()),
        ("2708-6", {MetricMatch(frozenset({"spo2"}))}),
        ("59408-5", {MetricMatch(frozenset({"spo2"}))}),
        (
            "8867-4,2339-0",
            {MetricMatch(frozenset({"heart_rate"})), MetricMatch(frozenset({"blood_glucose"}))},
        ),
        (
            f"{MDC}|149546",
            {MetricMatch(frozenset({"heart_rate"}), frozenset({"blood_pressure_monitor"}))},
        ),
        (
            f"{MDC}|149530",
            {MetricMatch(frozenset({"heart_rate"}), frozenset({"pulse_oximeter"}))},
        ),
    ],
)
def test_codes_name_the_stored_metrics(code, expected):
    assert set(observation_values(code=code)) == expected


def test_a_system_alone_matches_every_code_of_it():
    metrics = {m for match in observation_values(code=f"{LOINC}|") for m in match.metrics}
    assert metrics == {
        "bp_systolic",
        "bp_diastolic",
        "heart_rate",
        "spo2",
        "respiratory_rate",
        "body_weight",
        "body_temperature",
        "blood_glucose",
        "steps",
    }
    assert observation_values(category="laboratory") == (MetricMatch(frozenset({"blood_glucose"})),)


def test_references_name_ids_of_their_type_only():
    patient = uuid.uuid4()
    for value in (str(patient), f"Patient/{patient}", f"http://x/fhir/Patient/{patient}"):
        assert observation_values(patient=value) == (patient,)
    assert observation_values(subject=f"Device/{patient}") == ()  # not a Patient: no match
    assert observation_values(patient="not-a-uuid") == ()  # a FHIR id, not one of ours
    assert observation_values(patient=f"https://elsewhere/fhir/Patient/{patient}") == ()
    assert observation_values(device="Device/bpm-1234") == ("bpm-1234",)


@pytest.mark.parametrize(
    ("resource_type", "params", "parameter"),
    [
        ("Observation", {"date": "2026-02-31"}, "date"),
        ("Observation", {"date": "ap2026"}, "date"),
        ("Observation", {"date": "yesterday"}, "date"),
        ("Observation", {"_count": "-1"}, "_count"),
        ("Observation", {"_count": "ten"}, "_count"),
        ("Observation", {"_count": "1e3"}, "_count"),
        ("Observation", {"_sort": "code"}, "_sort"),
        ("Observation", {"_sort": "-date,_id"}, "_sort"),
        ("Observation", {"_summary": "true"}, "_summary"),
        ("Observation", {"_total": "all"}, "_total"),
        ("Observation", {"patient": "Patient/a b"}, "patient"),
        ("Observation", {"patient": "Patient/x/_history/1"}, "patient"),
        ("Observation", {"code:text": "pressure"}, "code:text"),
        ("Observation", {"code": "a|b|c"}, "code"),
        ("Observation", {"patient:missing": "maybe"}, "patient:missing"),
        ("Observation", {"date": "2026\x00"}, "date"),
        ("Patient", {"_sort": "-date"}, "_sort"),
        ("Location", {"name:below": "Tor"}, "name:below"),
        ("AuditEvent", {"entity": "just-an-id"}, "entity"),
    ],
)
def test_malformed_parameters_name_the_parameter(resource_type, params, parameter):
    with pytest.raises(SearchParameterError) as refused:
        parse_search(resource_type, list(params.items()))
    assert refused.value.parameter == parameter


def test_unknown_parameters_are_ignored_unless_strict():
    query = parse_search("Observation", [("colour", "red"), ("code", "8867-4")])
    assert query.used == (("code", "8867-4"),) and query.ignored == ("colour",)
    with pytest.raises(SearchParameterError) as refused:
        parse_search("Observation", [("colour", "red")], strict=True)
    assert refused.value.parameter == "colour"
    assert strict_handling("respond-async, handling=strict") is True
    assert strict_handling("handling=lenient") is False
    assert strict_handling(None) is False


def test_paging_controls():
    assert parse_search("Observation", [("_count", "5000")]).count == 1000  # at most 1000
    assert parse_search("Observation", [("_count", "0")]).summary_count
    assert parse_search("Observation", [("_summary", "count")]).summary_count
    assert parse_search("Observation", []).sort == "-date"
    assert parse_search("Observation", [("code", "")]).clauses == ()  # empty: ignored
    lastn = parse_lastn([("patient", str(uuid.uuid4())), ("max", "3")])
    assert lastn.max == 3
    for params in (
        [("max", "3")],
        [("patient", "x"), ("max", "0")],
        [("patient", "x"), ("_count", "3")],
    ):
        with pytest.raises(SearchParameterError):
            parse_lastn(params)


PARAMETER_NAMES = sorted(
    {p.name for ps in PARAMETERS.values() for p in ps}
    | {"_count", "_sort", "_summary", "_total", "_cursor", "max", "other"}
)
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    resource_type=st.sampled_from(sorted(PARAMETERS)),
    items=st.lists(st.tuples(st.sampled_from(PARAMETER_NAMES), SAFE_TEXT), max_size=4),
    strict=st.booleans(),
)
def test_any_query_parses_or_is_refused_by_name(resource_type, items, strict):
    try:
        parse_search(resource_type, items, strict=strict)
    except SearchParameterError as refused:
        assert refused.parameter


# -- pure: cursors and scopes -----------------------------------------------------------------


def test_cursors_are_bound_to_their_search_and_signed():
    cursor = Cursor(True, (1772000000000000, "bpm-1", "heart_rate", 1772000000000000), 42)
    token = encode_cursor(cursor, "search-1", SECRET)
    assert decode_cursor(token, "search-1", SECRET) == cursor
    forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    for bad, bound, secret in (
        (token, "search-2", SECRET),  # another search, or another caller
        (token, "search-1", b"other key"),
        (forged, "search-1", SECRET),
        ("garbage", "search-1", SECRET),
        ("a.b.c", "search-1", SECRET),
        ("x" * 2000, "search-1", SECRET),
    ):
        with pytest.raises(SearchParameterError):
            decode_cursor(bad, bound, secret)


@given(st.text(max_size=200))
def test_any_cursor_text_is_refused_cleanly(text):
    with pytest.raises(SearchParameterError):
        decode_cursor(text, "search-1", SECRET)


@pytest.mark.parametrize(
    ("kind", "resource_type", "allowed"),
    [
        ("operator", "AuditEvent", True),
        ("operator", "Patient", True),
        ("provider", "Patient", True),
        ("provider", "Observation", True),
        ("provider", "AuditEvent", False),
        ("startup", "Observation", True),
        ("startup", "Device", True),
        ("startup", "Patient", False),
        ("startup", "AuditEvent", False),
        ("nobody", "Location", False),
    ],
)
def test_scopes_by_kind_of_organisation(kind, resource_type, allowed):
    assert access.permits(access.scopes_for(kind), resource_type, "search") is allowed
    if not allowed:
        with pytest.raises(PermissionDeniedError):
            access.require(kind, resource_type, "read")


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


# -- capabilities -------------------------------------------------------------------------------


def sample_values(world: World) -> dict[tuple[str, str], str]:
    """A value for every search parameter the server may declare (the test fails on one
    it declares without a sample here, so this table follows the CapabilityStatement)."""
    p1, p = world.patients["P1"], world.organisations["p"]
    some = oracle(world)[0]
    return {
        ("Observation", "_id"): some.id,
        ("Observation", "patient"): f"Patient/{p1}",
        ("Observation", "subject"): p1,
        ("Observation", "device"): f"Device/{world.devices['bp']}",
        ("Observation", "code"): f"{LOINC}|85354-9",
        ("Observation", "component-code"): "8480-6",
        ("Observation", "combo-code"): "8867-4",
        ("Observation", "category"): "vital-signs",
        ("Observation", "date"): "ge2026-02-10",
        ("Observation", "identifier"): f"urn:ietf:rfc:3986|{observation_identifier(some.id)}",
        ("Patient", "_id"): p1,
        ("Patient", "identifier"): "x|y",
        ("Patient", "organization"): f"Organization/{p}",
        ("Device", "_id"): world.devices["bp"],
        ("Device", "identifier"): world.devices["ox"],
        ("Device", "type"): "blood_pressure_monitor",
        ("Device", "organization"): world.organisations["a"],
        ("Device", "status"): "active",
        ("Location", "_id"): "001272",
        ("Location", "identifier"): "001272",
        ("Location", "name"): "Tor",
        ("Organization", "_id"): p,
        ("Organization", "identifier"): "010203",
        ("Organization", "name"): "provider",
        ("Organization", "type"): "prov",
        ("AuditEvent", "_id"): str(uuid.uuid4()),
        ("AuditEvent", "date"): "ge2026",
        ("AuditEvent", "agent"): f"Organization/{p}",
        ("AuditEvent", "entity"): f"Patient/{p1}",
        ("AuditEvent", "patient"): p1,
        ("AuditEvent", "outcome"): "0",
        ("AuditEvent", "subtype"): "read",
        ("AuditEvent", "action"): "E",
    }


def test_the_capability_statement_declares_exactly_what_answers(world):
    statement = world.ok("", "/metadata")  # no token needed
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1" and statement["kind"] == "instance"
    samples = sample_values(world)
    ids_to_read = {
        "Observation": oracle(world)[0].id,
        "Patient": world.patients["P1"],
        "Device": world.devices["bp"],
        "Location": "001272",
        "Organization": world.organisations["p"],
    }
    declared = set()
    for resource in statement["rest"][0]["resource"]:
        kind = resource["type"]
        if kind not in ids_to_read and kind != "AuditEvent":
            continue  # served by another part of /fhir
        assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
        if kind in ids_to_read:
            assert world.ok("operator", f"/{kind}/{ids_to_read[kind]}")["id"] == ids_to_read[kind]
        for parameter in resource["searchParam"]:
            declared.add((kind, parameter["name"]))
            bundle = world.ok(
                "operator",
                f"/{kind}",
                {parameter["name"]: samples[kind, parameter["name"]]},
                headers={"Prefer": "handling=strict"},
            )
            assert bundle["type"] == "searchset"
        for operation in resource.get("operation", []):
            if (kind, operation["name"]) == ("Observation", "lastn"):
                world.ok("operator", "/Observation/$lastn", {"patient": world.patients["P1"]})
            else:  # bulk export (tests/test_fhir_bulk.py walks it through)
                assert (kind, operation["name"]) == ("Patient", "export")
                kicked = world.get("operator", "/Patient/$export",
                                   headers={"Prefer": "respond-async"})  # fmt: skip
                assert kicked.status_code == 202, kicked.text
    assert declared == set(samples)
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    assert [o["name"] for o in rest["operation"]] == ["export"]
    kicked = world.get("operator", "/$export", headers={"Prefer": "respond-async"})
    assert kicked.status_code == 202, kicked.text


def test_errors_are_operation_outcomes(world):
    body = assert_outcome(world.get("", "/Observation"), 401)
    assert body["issue"][0]["code"] == "login"
    assert "Bearer" in world.get("", "/Observation").headers["www-authenticate"]
    assert_outcome(world.get("p", "/Medication"), 404)
    assert_outcome(world.get("p", "/Observation/not-ours"), 404)
    assert_outcome(world.get("p", "/Observation", {"_format": "xml"}), 406, mentions="_format")
    assert world.ok("p", "/Observation", {"_format": "json", "_count": "1"})["type"] == "searchset"
    assert_outcome(
        world.http.delete(
            world.fhir + f"/Patient/{world.patients['P1']}",
            headers={"Authorization": f"Bearer {world.tokens['p']}"},
        ),
        405,
    )
    # the rest of the API keeps its problem details
    assert world.http.get(world.url + "/api/v1/devices").headers["content-type"] == (
        "application/problem+json"
    )


# -- searching Observations -------------------------------------------------------------------


def test_a_patients_observations_are_the_oracles_newest_first(world):
    expected = of_patient(world, "P1")
    bundle = world.ok("p", "/Observation", {"patient": world.patients["P1"], "_count": "1000"})
    Bundle.model_validate(bundle)
    assert bundle["total"] == len(expected)
    assert [e["resource"] for e in bundle["entry"]] == [e.resource for e in expected]
    assert {e["search"]["mode"] for e in bundle["entry"]} == {"match"}
    assert bundle["entry"][0]["fullUrl"] == f"{world.fhir}/Observation/{expected[0].id}"
    # each blood-pressure measurement is one panel: lone halves too, never split
    panels = [e for e in expected if e.code == "blood_pressure"]
    assert len(panels) == 81
    absent = [c for e in panels for c in e.resource["component"] if "dataAbsentReason" in c]
    assert len(absent) == 4 + 5  # i % 19 == 7 (4 times) and i % 17 == 5 (5 times), i < 80


@pytest.mark.parametrize("count", [7, 50])
@pytest.mark.parametrize("sort", ["-date", "date"])
def test_paging_walks_every_entry_exactly_once_both_ways(world, count, sort):
    expected = [e.id for e in of_patient(world, "P1", "P2")]
    if sort == "date":
        expected.reverse()
    params = {
        "patient": f"{world.patients['P1']},{world.patients['P2']}",
        "_count": str(count),
        "_sort": sort,
    }
    pages = walk(world, "p", "/Observation", params)
    assert [i for page in pages for i in ids(page)] == expected
    assert {page["total"] for page in pages} == {len(expected)}
    assert all(len(ids(page)) == count for page in pages[:-1])
    assert "previous" not in {link["relation"] for link in pages[0]["link"]}
    back = walk(world, "p", "/Observation", params, relation="previous", start=pages[-1])
    assert [ids(page) for page in reversed(back)] == [ids(page) for page in pages]


@pytest.mark.parametrize(
    ("code", "wanted"),
    [
        ("85354-9", lambda e: e.code == "blood_pressure"),
        (f"{LOINC}|85354-9", lambda e: e.code == "blood_pressure"),
        (f"{LOINC}|8480-6", lambda e: e.code == "blood_pressure"),
        ("8462-4", lambda e: e.code == "blood_pressure"),
        (f"{MDC}|150020", lambda e: e.code == "blood_pressure"),
        ("|85354-9", lambda e: False),
        ("http://snomed.info/sct|85354-9", lambda e: False),
        ("8867-4", lambda e: e.code == "heart_rate"),
        (f"{MDC}|149546", lambda e: e.code == "heart_rate" and e.device_type.startswith("blood")),
        (f"{MDC}|149530", lambda e: e.code == "heart_rate" and e.device_type == "pulse_oximeter"),
        ("59408-5", lambda e: e.code == "spo2"),
        ("8867-4,2708-6", lambda e: e.code in ("heart_rate", "spo2")),
        (f"{LOINC}|", lambda e: True),
        ("9999-9", lambda e: False),
    ],
)
def test_code_forms(world, code, wanted):
    expected = [e.id for e in of_patient(world, "P1") if wanted(e)]
    bundle = world.ok(
        "p", "/Observation", {"patient": world.patients["P1"], "code": code, "_count": "1000"}
    )
    assert ids(bundle) == expected and bundle["total"] == len(expected)


@pytest.mark.parametrize(
    ("params", "wanted"),
    [
        ({"component-code": "8480-6"}, lambda e: e.code == "blood_pressure"),
        ({"component-code": "85354-9"}, lambda e: False),
        ({"combo-code": "85354-9"}, lambda e: e.code == "blood_pressure"),
        ({"category": "vital-signs"}, lambda e: True),
        (
            {"category": "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"},
            lambda e: True,
        ),
        ({"category": "laboratory"}, lambda e: False),
        ([("code", "8867-4"), ("code", "2708-6")], lambda e: False),  # repeated: AND
        ({"device": "placeholder-ox"}, lambda e: e.device_type == "pulse_oximeter"),
        (
            {"date": "ge2026-02-10", "code": "8867-4"},
            lambda e: e.code == "heart_rate" and e.effective >= utc(2026, 2, 9, 23),
        ),
        ({"date": "lt2026-02-10T00:00:00Z"}, lambda e: e.effective < utc(2026, 2, 10)),
        ({"date": "le2026-02-10T00:00:00Z"}, lambda e: e.effective < utc(2026, 2, 10, 0, 0, 1)),
        ({"date": "gt2026-02-10T00:00:00Z"}, lambda e: e.effective >= utc(2026, 2, 10, 0, 0, 1)),
    ],
)
def test_other_observation_criteria(world, params, wanted):
    items = list(params.items()) if isinstance(params, dict) else params
    items = [(k, world.devices["ox"] if v == "placeholder-ox" else v) for k, v in items]
    expected = [e.id for e in of_patient(world, "P1") if wanted(e)]
    bundle = world.ok(
        "p", "/Observation", [("patient", world.patients["P1"]), *items, ("_count", "1000")]
    )
    assert ids(bundle) == expected and bundle["total"] == len(expected)


@pytest.mark.parametrize(
    ("date", "labels"),
    [
        ("2026-03-10", "B2 B3 B4"),
        ("eq2026-03-10", "B2 B3 B4"),
        ("ne2026-03-10", "B1 B5"),
        ("gt2026-03-10", "B5"),
        ("sa2026-03-10", "B5"),
        ("ge2026-03-10", "B2 B3 B4 B5"),
        ("lt2026-03-10", "B1"),
        ("eb2026-03-10", "B1"),
        ("le2026-03-10", "B1 B2 B3 B4"),
        ("2026-03", "B1 B2 B3 B4 B5"),
        ("2026", "B1 B2 B3 B4 B5"),
        ("2026-03-10T12:00Z", "B3"),
        ("2026-03-10T13:00+01:00", "B3"),
        ("2026-03-10T12:00:00Z", "B3"),
        ("2026-03-10T12:00:00.0Z", "B3"),
        ("2026-03-10T12:00:00.5Z", ""),
        ("2026-03-10T00:00", "B2"),  # no zone: Europe/Rome
        ("lt2026-03-10T23:00:00Z", "B1 B2 B3 B4"),
        ("ge2026-03-10T23:00:00Z", "B5"),
        ("2026-03-09,2026-03-11", "B1 B5"),  # OR
    ],
)
def test_date_prefixes_and_precision(world, date, labels):
    # only the boundary readings are oximeter spo2 readings from 9 March on
    items = [("code", "2708-6"), ("date", "ge2026-03-09"), ("date", date)]
    bundle = world.ok("p", "/Observation", [("patient", world.patients["P1"]), *items])
    expected = {world.boundary[label] for label in labels.split()}
    assert set(ids(bundle)) == expected and bundle["total"] == len(expected)


def test_a_panel_matches_when_either_half_does(world):
    panel_id = f"{world.devices['bp']}.blood-pressure.{micros(SPLIT)}"
    [panel] = [e for e in of_patient(world, "P1") if e.id == panel_id]
    assert [c["valueQuantity"]["value"] for c in panel.resource["component"]] == [140, 90]
    for day, found in (("2026-03-20", [panel.resource]), ("2026-03-21", [panel.resource]),
                       ("2026-03-22", [])):  # fmt: skip
        bundle = world.ok("p", "/Observation", {"patient": world.patients["P1"],
                                               "code": "85354-9", "date": day})  # fmt: skip
        assert [e["resource"] for e in bundle.get("entry", [])] == found, day
        assert bundle["total"] == len(found)


def test_totals_are_counted_up_to_a_cap_unless_asked_for(world, monkeypatch):
    # a patient's year of readings costs more to count than its page to answer: searches
    # naming patients are capped like searches over a whole tenant (FHIR makes total optional)
    monkeypatch.setattr(observations, "TOTAL_CAP", 50)
    everything = len(oracle(world))
    broad = world.ok("operator", "/Observation", {"_count": "10"})
    assert "total" not in broad and len(ids(broad)) == 10
    assert world.ok("operator", "/Observation", {"_total": "accurate"})["total"] == everything
    assert world.ok("operator", "/Observation", {"_summary": "count"})["total"] == everything
    p1 = {"patient": world.patients["P1"]}
    assert len(of_patient(world, "P1")) > 50
    assert "total" not in world.ok("operator", "/Observation", p1)
    assert world.ok("operator", "/Observation", {**p1, "_total": "accurate"})["total"] == len(
        of_patient(world, "P1")
    )
    assert world.ok("q", "/Observation", {"_count": "10"})["total"] == 30  # under the cap
    coded = world.ok("p", "/Observation", {**p1, "code": "2708-6", "_count": "10"})
    assert coded["total"] == len([e for e in of_patient(world, "P1") if e.code == "spo2"]) < 50


def test_identifier_id_and_sort_and_counts(world):
    expected = of_patient(world, "P1")
    panel = next(e for e in expected if e.code == "blood_pressure")
    identifier = panel.resource["identifier"][0]
    bundle = world.ok(
        "p", "/Observation", {"identifier": f"{identifier['system']}|{identifier['value']}"}
    )
    assert ids(bundle) == [panel.id]
    both = {panel.id, expected[3].id}
    assert ids(world.ok("p", "/Observation", {"_id": ",".join(sorted(both))})) == [
        e.id for e in expected if e.id in both
    ]
    count = world.ok("p", "/Observation", {"patient": world.patients["P1"], "_summary": "count"})
    assert count["total"] == len(expected) and "entry" not in count
    assert world.ok("p", "/Observation", {"patient": world.patients["P1"], "_count": "0"})[
        "total"
    ] == len(expected)
    no_total = world.ok(
        "p", "/Observation", {"patient": world.patients["P1"], "_total": "none", "_count": "5"}
    )
    assert "total" not in no_total and len(ids(no_total)) == 5


def test_searching_with_a_form_posted_is_searching(world):
    params = {"patient": world.patients["P1"], "code": "8867-4", "_count": "7"}
    got = world.ok("p", "/Observation", params)
    posted = world.http.post(
        world.fhir + "/Observation/_search",
        data=params,
        headers={"Authorization": f"Bearer {world.tokens['p']}"},
    )
    assert posted.status_code == 200, posted.text
    assert posted.json()["entry"] == got["entry"] and posted.json()["total"] == got["total"]
    assert posted.json()["link"] == got["link"]  # paging goes on with GET
    not_a_form = world.http.post(
        world.fhir + "/Observation/_search",
        json=params,
        headers={"Authorization": f"Bearer {world.tokens['p']}"},
    )
    assert_outcome(not_a_form, 400, mentions="x-www-form-urlencoded")


def test_unknown_parameters_lenient_by_default_strict_on_request(world):
    params = {"patient": world.patients["P1"], "colour": "red", "_count": "3"}
    bundle = world.ok("p", "/Observation", params)
    self_link = bundle["link"][0]
    assert self_link["relation"] == "self" and "colour" not in self_link["url"]
    assert_outcome(
        world.get("p", "/Observation", params, {"Prefer": "handling=strict"}),
        400,
        mentions="colour",
    )


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"date": "2026-02-30"}, "date"),
        ({"date": "ap2026-02-01"}, "date"),
        ({"date": "2026-02-01T10:00+25:00"}, "date"),
        ({"_count": "-3"}, "_count"),
        ({"_count": "lots"}, "_count"),
        ({"_sort": "-value"}, "_sort"),
        ({"_cursor": "not-a-cursor"}, "_cursor"),
        ({"code:below": "85354-9"}, "code:below"),
        ({"patient": "Patient/x y"}, "patient"),
    ],
)
def test_malformed_parameters_are_400_operation_outcomes(world, params, parameter):
    body = assert_outcome(world.get("p", "/Observation", params), 400, mentions=parameter)
    assert body["issue"][0]["code"] == "invalid"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    resource_type=st.sampled_from(sorted(PARAMETERS)),
    items=st.lists(st.tuples(st.sampled_from(PARAMETER_NAMES), SAFE_TEXT), min_size=1, max_size=3),
)
def test_generated_parameters_never_fail_the_server(world, resource_type, items):
    answer = world.get("operator", f"/{resource_type}", items)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert_outcome(answer, 400)
    else:
        Bundle.model_validate(answer.json())


# -- $lastn -----------------------------------------------------------------------------------


def test_lastn_gives_the_latest_of_each_code(world):
    expected = of_patient(world, "P1")
    bundle = world.ok("p", "/Observation/$lastn", {"patient": world.patients["P1"], "max": "3"})
    Bundle.model_validate(bundle)
    by_code: dict[str, list[str]] = {}
    for e in expected:
        by_code.setdefault(e.code, []).append(e.id)
    assert ids(bundle) == [i for code in sorted(by_code) for i in by_code[code][:3]]
    vitals = world.ok(
        "p", "/Observation/$lastn", {"patient": world.patients["P1"], "code": "85354-9"}
    )
    assert ids(vitals) == by_code["blood_pressure"][:1]
    assert_outcome(world.get("p", "/Observation/$lastn", {"max": "2"}), 400, mentions="patient")
    assert_outcome(
        world.get("p", "/Observation/$lastn", {"patient": world.patients["P1"], "max": "many"}), 400
    )


# -- tenants ------------------------------------------------------------------------------------


def test_tenants_see_their_own_observations(world):
    a_devices = {world.devices[k] for k in ("bp", "ox", "thermo")}
    b_devices = {world.devices[k] for k in ("bp2", "scale")}
    p_patients = {uuid.UUID(world.patients[k]) for k in ("P1", "P2")}
    for who, visible in (
        ("operator", lambda r: True),
        ("p", lambda r: r.patient_id in p_patients),
        ("q", lambda r: r.patient_id == uuid.UUID(world.patients["Q1"])),
        ("a", lambda r: r.device_id in a_devices),  # unassigned readings included
        ("b", lambda r: r.device_id in b_devices),
    ):
        expected = [e.id for e in oracle(world, visible)]
        pages = walk(world, who, "/Observation", {"_count": "200"})
        assert [i for page in pages for i in ids(page)] == expected, who
        assert pages[0]["total"] == len(expected)
    unassigned = world.ok("a", "/Observation", {"patient:missing": "true"})
    assert unassigned["total"] == 15
    assert world.ok("p", "/Observation", {"patient:missing": "true"})["total"] == 0


def test_another_tenants_data_is_not_found(world):
    p1_observation = of_patient(world, "P1")[0].id
    q1_observation = of_patient(world, "Q1")[0].id
    assert_outcome(world.get("q", f"/Observation/{p1_observation}"), 404)
    assert_outcome(world.get("b", f"/Observation/{p1_observation}"), 404)
    assert world.ok("a", f"/Observation/{p1_observation}")["id"] == p1_observation
    assert_outcome(world.get("p", f"/Observation/{q1_observation}"), 404)
    assert world.ok("q", "/Observation", {"patient": world.patients["P1"]})["total"] == 0
    assert ids(world.ok("q", "/Observation/$lastn", {"patient": world.patients["P1"]})) == []
    assert ids(world.ok("b", "/Observation/$lastn", {"patient": world.patients["P1"]})) == []
    lastn = {"patient": world.patients["P1"], "max": "2"}
    assert ids(world.ok("a", "/Observation/$lastn", lastn)) == ids(
        world.ok("p", "/Observation/$lastn", lastn)
    )  # start-up a's devices are all P1 wears
    assert_outcome(world.get("q", f"/Patient/{world.patients['P1']}"), 404)
    assert world.ok("p", f"/Patient/{world.patients['P1']}")["id"] == world.patients["P1"]
    assert {e["resource"]["id"] for e in world.ok("p", "/Patient")["entry"]} == {
        world.patients["P1"],
        world.patients["P2"],
    }
    # start-ups read no Patient at all: their scopes say so, for every patient alike
    assert_outcome(world.get("a", f"/Patient/{world.patients['P1']}"), 403)
    assert_outcome(world.get("a", "/Patient"), 403)


def test_devices_and_organisations_by_tenant(world):
    def device_ids(who):
        return {e["resource"]["id"] for e in world.ok(who, "/Device").get("entry", [])}

    d = world.devices
    assert device_ids("a") == {d["bp"], d["ox"], d["thermo"]}
    assert device_ids("p") == {d["bp"], d["ox"], d["bp2"]}  # enrolled with its patients
    assert device_ids("q") == {d["scale"]}
    assert_outcome(world.get("p", f"/Device/{d['scale']}"), 404)
    assert world.ok("p", f"/Device/{d['bp2']}")["owner"]["reference"] == (
        f"Organization/{world.organisations['b']}"
    )

    def organisations(who):
        return {e["resource"]["id"] for e in world.ok(who, "/Organization").get("entry", [])}

    o = world.organisations
    assert organisations("p") == {o["p"], o["a"], o["b"]}
    assert organisations("a") == {o["a"], o["p"]}
    assert organisations("operator") == set(o.values())
    asl = world.ok("operator", "/Organization", {"type": "asl"})
    assert (
        ids(asl) == [o["q"]] and asl["entry"][0]["resource"]["identifier"][0]["value"] == "010203"
    )


def test_locations_are_public_reference_data(world):
    torino = world.ok("b", "/Location/001272")
    assert torino["name"] == "Torino"
    assert ids(world.ok("b", "/Location", {"name": "TORI"})) == ["001272"]
    assert ids(world.ok("b", "/Location", {"name:exact": "Torino"})) == ["001272"]
    pages = walk(world, "a", "/Location", {"_count": "100"})
    assert [p["total"] for p in pages] == [312] * 4
    assert len({i for page in pages for i in ids(page)}) == 312


def test_cursors_cannot_cross_tenants_or_be_altered(world):
    params = {"patient": world.patients["P1"], "_count": "5"}
    first = world.ok("p", "/Observation", params)
    next_url = {link["relation"]: link["url"] for link in first["link"]}["next"]
    next_params = dict(parse_qsl(urlsplit(next_url).query))
    assert ids(world.ok("p", "/Observation", next_params))  # the owner pages on
    # another provider replaying it, even with the same criteria
    assert_outcome(world.get("q", "/Observation", next_params), 400, mentions="_cursor")
    assert_outcome(world.get("operator", "/Observation", next_params), 400, mentions="_cursor")
    # another search with the same cursor
    other = {**next_params, "code": "8867-4"}
    assert_outcome(world.get("p", "/Observation", other), 400, mentions="_cursor")
    payload, signature = next_params["_cursor"].split(".")
    tampered = {
        **next_params,
        "_cursor": payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature,
    }
    assert_outcome(world.get("p", "/Observation", tampered), 400, mentions="_cursor")


# -- audit --------------------------------------------------------------------------------------


def test_reads_of_patient_data_are_audited_for_the_operator(world):
    p1 = world.patients["P1"]
    observation = of_patient(world, "P1")[1].id
    world.ok("p", f"/Observation/{observation}")
    world.ok("p", "/Observation", {"patient": p1, "code": "8867-4", "_count": "2"})
    assert_outcome(world.get("q", f"/Observation/{observation}"), 404)
    events = world.ok("operator", "/AuditEvent", {"patient": p1, "_count": "1000"})
    Bundle.model_validate(events)
    resources = [e["resource"] for e in events["entry"]]
    for resource in resources:
        AuditEvent.model_validate(resource)
    read = next(
        r
        for r in resources
        if r["entity"][0].get("what", {}).get("reference") == f"Observation/{observation}"
    )
    assert read["action"] == "R" and read["outcome"] == "0"
    assert read["agent"][0]["who"]["reference"] == f"Organization/{world.organisations['p']}"
    assert {"reference": f"Patient/{p1}"} in [e.get("what") for e in read["entity"]]
    refused = world.ok(
        "operator",
        "/AuditEvent",
        {
            "agent": f"Organization/{world.organisations['q']}",
            "outcome": "4",
            "entity": f"Observation/{observation}",
        },
    )
    assert refused["total"] == 1
    searches = world.ok(
        "operator",
        "/AuditEvent",
        {
            "agent": world.organisations["p"],
            "subtype": "search-type",
            "action": "E",
            "date": "ge2026",
            "_sort": "-date",
            "_count": "1",
        },
    )
    entity = searches["entry"][0]["resource"]["entity"][0]
    assert "code=8867-4" in __import__("base64").b64decode(entity["query"]).decode()
    # only the operator reads the trail
    assert_outcome(world.get("p", "/AuditEvent"), 403)
    assert_outcome(world.get("a", "/AuditEvent"), 403)
    # locations are no patient data: not audited
    before = world.ok("operator", "/AuditEvent", {"_summary": "count"})["total"]
    world.ok("p", "/Location/001272")
    assert world.ok("operator", "/AuditEvent", {"_summary": "count"})["total"] == before


# -- a real FHIR client -------------------------------------------------------------------------


def test_fhirpy_reads_searches_and_pages(world):
    client = SyncFHIRClient(world.fhir, authorization=f"Bearer {world.tokens['p']}")
    expected = of_patient(world, "P1")
    found = client.resources("Observation").search(patient=world.patients["P1"]).limit(40)
    assert [o["id"] for o in found.fetch_all()] == [e.id for e in expected]
    assert found.count() == len(expected)
    read = client.reference("Observation", expected[0].id).to_resource()
    assert read["code"] == expected[0].resource["code"]
    march = (
        client.resources("Observation")
        .search(patient=world.patients["P1"], code="2708-6", date__ge="2026-03-10")
        .sort("date")
    )
    assert [o["id"] for o in march.fetch_all()] == [
        world.boundary[b] for b in ("B2", "B3", "B4", "B5")
    ]
    patient = client.reference("Patient", world.patients["P1"]).to_resource()
    assert (
        patient["managingOrganization"]["reference"] == f"Organization/{world.organisations['p']}"
    )
