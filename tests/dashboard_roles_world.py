"""The world that the tests of Grafana's database roles read: a store of one physical form
(TimescaleDB only when available) with two providers (A, B) and two start-ups (S1, S2), a
device that moves from A's patient to B's mid-period, two months of readings, a row of every
other table the views show, a crowd of other providers' patients, and the roles of A, B, S1,
S2 and the lab. `enrolment_of` says whose each reading is, worked out apart from the SQL.

The module-scoped `world` fixture is imported by test_dashboard_roles.py, whose tests stay in
one module as seeding takes seconds; `login`, `is_denied` and `revoke_all` serve the roles'
lifecycle tests too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from conftest import drop_database, migrated_store, with_database
from psycopg import sql

from ehealthlab.dashboards.roles import RoleCredentials, create_role, list_roles, revoke_role

ROME = ZoneInfo("Europe/Rome")
TORINO, LANZO = "001272", "001127"  # Torino; Lanzo Torinese
#: a reading every six hours, 1 March to 9 April 2026 (two months, six weekly chunks)
TIMES = [datetime(2026, 3, 1, tzinfo=UTC) + timedelta(hours=6 * i) for i in range(160)]
SWAP_DAY = date(2026, 3, 16)  # s1-swap-1 goes from provider A's patient to provider B's
#: the crowd: patients of CROWD_PROVIDERS other providers, each with a device of start-up S3
#: and a reading an hour, so that a provider's own patients are few among many
CROWD, CROWD_PROVIDERS = 200, 20


@dataclass
class World:
    """A store of one form with two providers, two start-ups and the roles of each."""

    url: str
    form: str
    organisations: dict[str, uuid.UUID] = field(default_factory=dict)
    patients: dict[str, uuid.UUID] = field(default_factory=dict)
    roles: dict[str, RoleCredentials] = field(default_factory=dict)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def login(self, who: str) -> psycopg.Connection:
        return login(self.url, self.roles[who])


def login(url: str, credentials: RoleCredentials, password: str | None = None):
    return psycopg.connect(
        url,
        user=credentials.role_name,
        password=credentials.password if password is None else password,
        autocommit=True,
        connect_timeout=10,
    )


def pilot_day(moment: datetime) -> date:
    return moment.astimezone(ROME).date()


# -- the world ---------------------------------------------------------------------------


def enrolment_of(device: str, moment: datetime) -> str | None:
    """Whose reading it is, by the enrolments `seed` makes (worked out apart from the SQL)."""
    day = pilot_day(moment)
    return {
        "s1-cuff-1": "A1",
        "s2-oxim-1": "A2",
        "s1-cuff-2": "B1",
        "s1-swap-1": "A2" if day < SWAP_DAY else "B1",
        "s2-oxim-2": None,
    }[device]


DEVICES = {  # device: (start-up, type)
    "s1-cuff-1": ("S1", "blood_pressure_monitor"),
    "s1-cuff-2": ("S1", "blood_pressure_monitor"),
    "s1-swap-1": ("S1", "blood_pressure_monitor"),
    "s2-oxim-1": ("S2", "pulse_oximeter"),
    "s2-oxim-2": ("S2", "pulse_oximeter"),
}
PROVIDER_OF = {"A1": "A", "A2": "A", "B1": "B"}


def seed(conn: psycopg.Connection, form: str) -> tuple[dict, dict]:
    """Registry, readings over two months, and a row of every other table the views show."""
    orgs = {}
    crowd = [(f"C{i}", "provider") for i in range(CROWD_PROVIDERS)]
    for key, kind in (("A", "provider"), ("B", "provider"), *crowd, ("S1", "startup"),
                      ("S2", "startup"), ("S3", "startup"), ("CMTo", "operator")):  # fmt: skip
        orgs[key] = conn.execute(
            "INSERT INTO organisations (kind, name) VALUES (%s, %s) RETURNING id",
            (kind, f"{key} {uuid.uuid4().hex[:6]}"),
        ).fetchone()[0]
    for device, (startup, kind) in DEVICES.items():
        conn.execute(
            "INSERT INTO devices (device_id, organisation_id, device_type, model, serial, status,"
            " last_seen_at) VALUES (%s, %s, %s, 'M-1', %s, 'online', now())",
            (device, orgs[startup], kind, device),
        )
    patients = {}
    for key in ("A1", "A2", "B1"):
        patients[key] = conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, %s, %s) RETURNING id",
            (orgs[PROVIDER_OF[key]], uuid.uuid4().bytes, f"label of {key}"),
        ).fetchone()[0]
    for patient, device, start, end in (
        ("A1", "s1-cuff-1", date(2026, 3, 1), None),
        ("A2", "s2-oxim-1", date(2026, 3, 1), None),
        ("B1", "s1-cuff-2", date(2026, 3, 1), None),
        ("A2", "s1-swap-1", date(2026, 3, 1), SWAP_DAY - timedelta(days=1)),
        ("B1", "s1-swap-1", SWAP_DAY, None),
    ):
        conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date, end_date,"
            " care_plan) VALUES (%s, %s, %s, %s, %s, '{\"bp_systolic\": 1}')",
            (patients[patient], device, TORINO if patient != "B1" else LANZO, start, end),
        )
    conn.execute("SELECT ehl_ensure_reading_partitions(%s)", (TIMES,))
    # attributed the way the writer does (store/readings.py), by the pilot day
    conn.execute(
        "INSERT INTO readings (device_id, metric, at, value, measured_at, received_at, seq,"
        " msg_id, clock_offset_s, clock_corrected, patient_id)"
        " SELECT d, 'bp_systolic', t, 100 + n %% 50, t, t + interval '2 s', n, 'm' || n, 0,"
        "        false, e.patient_id"
        " FROM unnest(%s::text[]) AS d"
        " CROSS JOIN unnest(%s::timestamptz[]) WITH ORDINALITY AS g(t, n)"
        " LEFT JOIN enrolments e ON e.device_id = d AND ehl_pilot_day(t) >= e.start_date"
        "  AND (e.end_date IS NULL OR ehl_pilot_day(t) <= e.end_date)",
        (list(DEVICES), TIMES),
    )
    # the crowd (no roles of theirs)
    conn.execute(
        "WITH p AS (INSERT INTO patients (organisation_id, identifier_hash, label)"
        "  SELECT (%s::uuid[])[1 + i %% %s], int4send(i), 'crowd'"
        "  FROM generate_series(1, %s) i RETURNING id),"
        " d AS (INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
        "  SELECT 'crowd-' || i, %s, 'scale', 'W', i FROM generate_series(1, %s) i"
        "  RETURNING device_id),"
        " pd AS (SELECT id, device_id FROM (SELECT id, row_number() OVER () n FROM p) a"
        "  JOIN (SELECT device_id, row_number() OVER () n FROM d) b USING (n))"
        " INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
        " SELECT id, device_id, %s, '2026-03-01' FROM pd",
        ([orgs[k] for k, _ in crowd], CROWD_PROVIDERS, CROWD, orgs["S3"], CROWD, TORINO),
    )
    conn.execute(
        "INSERT INTO readings (device_id, metric, at, value, measured_at, received_at, seq,"
        " msg_id, clock_offset_s, clock_corrected, patient_id)"
        " SELECT e.device_id, 'body_weight', t, 80, t, t, 1, 'm', 0, false, e.patient_id"
        " FROM enrolments e CROSS JOIN generate_series(%s::timestamptz, %s, '1 hour') t"
        " WHERE e.device_id LIKE 'crowd-%%'",
        (TIMES[0], TIMES[-1]),
    )
    for key, device in (("A1", "s1-cuff-1"), ("B1", "s1-cuff-2")):
        conn.execute(
            "INSERT INTO alerts (patient_id, rule, day, device_id, metric, at, value,"
            " measured_at, raised_at) VALUES (%s, 'bp_high', %s, %s, 'bp_systolic', %s, 190,"
            " %s, %s)",
            (patients[key], pilot_day(TIMES[4]), device, TIMES[4], TIMES[4], TIMES[4]),
        )
    for device in DEVICES:
        conn.execute(
            "INSERT INTO rejected_readings (received_at, device_id, msg_id, reason, detail,"
            " payload, payload_bytes) VALUES (%s, %s, 'bad', 'unit_mismatch', 'x', %s, 3)",
            (TIMES[1], device, b"raw"),
        )
        conn.execute(
            "INSERT INTO duplicate_readings (received_at, device_id, metric, at, measured_at,"
            " seq, msg_id) VALUES (%s, %s, 'bp_systolic', %s, %s, 1, 'again')",
            (TIMES[2], device, TIMES[0], TIMES[0]),
        )
        conn.execute(
            "INSERT INTO device_messages (device_id, received_at, msg_id, qos, payload_bytes,"
            " readings, accepted, duplicates, rejected) VALUES (%s, %s, 'm1', 1, 90, 1, 1, 0, 0)",
            (device, TIMES[0]),
        )
        conn.execute(
            "INSERT INTO device_status_events (device_id, received_at, status, retained, payload)"
            " VALUES (%s, %s, 'online', true, %s)",
            (device, TIMES[0], b'{"state": "online"}'),
        )
    conn.execute(
        "INSERT INTO api_tokens (organisation_id, role, token_hash) VALUES (%s, 'admin', %s)",
        (orgs["A"], b"secret token hash"),
    )
    conn.execute(
        "INSERT INTO sus_responses (answered_on, respondent, patient_id, municipality, items,"
        " score, simulated, source) VALUES ('2026-03-20', 'patient', %s, %s,"
        " '{3,3,3,3,3,3,3,3,3,3}', 50, false, 'csv')",
        (patients["A1"], TORINO),
    )
    pilot = conn.execute(
        "INSERT INTO mini_pilots (name, start_date, end_date) VALUES ('Valli', '2026-03-01',"
        " '2026-04-30') RETURNING id"
    ).fetchone()[0]
    conn.execute("INSERT INTO mini_pilot_startups VALUES (%s, %s)", (pilot, orgs["S1"]))
    conn.execute("INSERT INTO mini_pilot_municipalities VALUES (%s, %s)", (pilot, LANZO))
    conn.execute(
        "INSERT INTO evaluations (population, grouping, period_from, period_to, document)"
        " VALUES ('real', 'all', '2026-03-01', '2026-04-01', '{\"indicators\": {}}')"
    )
    if form == "timescale":
        # part of the rollup materialised, the rest real time; the first chunks compressed
        conn.execute(
            "CALL refresh_continuous_aggregate('readings_hourly', NULL, '2026-03-20'::timestamptz)"
        )
        conn.execute(
            "SELECT compress_chunk(c) FROM show_chunks('readings', older_than =>"
            " '2026-03-15'::timestamptz) AS c"
        )
    conn.execute("ANALYZE")
    return orgs, patients


def revoke_all(url: str) -> None:
    """Roles outlive databases (they belong to the cluster): drop every one we made."""
    with psycopg.connect(url, autocommit=True) as conn:
        for role in list_roles(conn):
            revoke_role(conn, role.role_name)


@pytest.fixture(scope="module", params=["plain", "timescale"])
def world(request) -> Iterator[World]:
    """Read-only tests share one seeded store of each form and its five roles."""
    admin_url, name = migrated_store(request, request.param)
    url = with_database(admin_url, name)
    try:
        w = World(url, request.param)
        with w.admin() as conn:
            w.organisations, w.patients = seed(conn, request.param)
            for key in ("A", "B", "S1", "S2"):
                w.roles[key] = create_role(conn, w.organisations[key])
            w.roles["lab"] = create_role(conn, None)
        yield w
    finally:
        revoke_all(url)
        drop_database(admin_url, name)


def is_denied(conn: psycopg.Connection, statement: sql.Composable | str) -> bool:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False
