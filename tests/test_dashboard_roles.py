"""Grafana's database roles against a real PostgreSQL, on both physical forms of the store.

A provider's role reads its own patients' rows and nothing of another provider's, whatever SQL
it sends: the tables, the plain form's partitions, TimescaleDB's chunks (compressed ones too)
and rollup, the registry and the platform's functions are all refused. A start-up's role reads
only its devices; the lab role every row, without identifiers or secrets. No role writes
anything, not even with read-only switched off. Revoking ends logins; passwords are kept only
as SCRAM verifiers. The seeded store and its roles are dashboard_roles_world.py's.
"""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest
from dashboard_roles_world import (
    CROWD,
    DEVICES,
    PROVIDER_OF,
    TIMES,
    World,
    enrolment_of,
    is_denied,
    world,
)
from psycopg import sql

from ehealthlab.dashboards.roles import SCHEMAS, role_name

__all__ = ["world"]


#: columns no dashboard role may see, in any relation it can read
SECRET_COLUMNS = {
    "identifier_hash", "token_hash", "label", "payload", "payload_digest", "content_digest",
    "acknowledged_by",
}  # fmt: skip
#: schemas of system and extension catalogues (metadata readable by PUBLIC, no rows of ours)
CATALOGUE_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


def not_refused(conn: psycopg.Connection, targets: list[str]) -> list[tuple[str, str]]:
    """The targets a role's `SELECT * FROM target` is not refused with permission denied:
    (target, what happened). TimescaleDB's compressed hypertable fails for everyone, before
    any permission check ("chunk ... has no dimension slices"); that is no reading either."""
    found = []
    for target in targets:
        try:
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.SQL(target)))
        except psycopg.errors.InsufficientPrivilege:
            continue
        except psycopg.errors.DataCorrupted:
            if "._compressed_hypertable_" in target:
                continue
            found.append((target, "DataCorrupted"))
        else:
            found.append((target, "read"))
    return found


def relations_outside(conn: psycopg.Connection, schema: str) -> list[str]:
    """Every table, partition, chunk, view and rollup of the database that is neither in
    `schema` nor a system or extension catalogue (TimescaleDB's metadata, readable by
    PUBLIC, holds no rows of ours; its chunks and rollup are not extension members)."""
    rows = conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname <> ALL (%s)"
        " AND n.nspname <> %s AND n.nspname NOT LIKE 'pg_temp%%'"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
        "                 AND d.objid = c.oid AND d.deptype = 'e')"
        " ORDER BY 1",
        (list(CATALOGUE_SCHEMAS), schema),
    ).fetchall()
    return [r[0] for r in rows]


# -- provider ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["A", "B"])
def test_a_provider_reads_its_own_patients_rows_only(world: World, provider: str) -> None:
    own = {k for k, p in PROVIDER_OF.items() if p == provider}
    own_ids = {world.patients[k] for k in own}
    expected = Counter(
        d for d in DEVICES for t in TIMES if PROVIDER_OF.get(enrolment_of(d, t) or "") == provider
    )
    with world.login(provider) as conn:
        assert conn.execute("SELECT id FROM organisation").fetchall() == [
            (world.organisations[provider],)
        ]
        assert {r[0] for r in conn.execute("SELECT id FROM patients")} == own_ids
        readings = conn.execute("SELECT patient_id, device_id, at FROM readings").fetchall()
        assert {r[0] for r in readings} == own_ids
        assert Counter(r[1] for r in readings) == expected
        assert all(enrolment_of(d, t) in own for _, d, t in readings)
        hourly = conn.execute(
            "SELECT device_id, sum(readings)::int, min(bucket) FROM readings_hourly GROUP BY 1"
        ).fetchall()
        assert Counter({d: n for d, n, _ in hourly}) == expected
        hourly_patients = {r[0] for r in conn.execute("SELECT patient_id FROM readings_hourly")}
        assert hourly_patients == own_ids
        # each device's newest reading, only where it is one of its own patients' (a device
        # that moved on to the other provider's patient says nothing of that patient)
        newest = set(conn.execute("SELECT device_id, patient_id FROM device_last_readings"))
        assert newest == {
            (d, world.patients[k]) for d in DEVICES if (k := enrolment_of(d, TIMES[-1])) in own
        }
        daily = conn.execute(
            "SELECT patient_id, sum((counts ->> 'bp_systolic')::int)::int"
            " FROM readings_patient_daily GROUP BY 1"
        ).fetchall()
        assert {p for p, _ in daily} == own_ids
        assert sum(n for _, n in daily) == sum(expected.values())
        assert {r[0] for r in conn.execute("SELECT patient_id FROM alerts")} == (
            own_ids & {world.patients["A1"], world.patients["B1"]}
        )
        assert {r[0] for r in conn.execute("SELECT patient_id FROM enrolments")} == own_ids
        devices = {r[0] for r in conn.execute("SELECT device_id FROM devices")}
        # now (after the swap) s1-swap-1 serves B1: A sees it in its past readings only
        assert devices == ({"s1-cuff-1", "s2-oxim-1"} if provider == "A" else
                           {"s1-cuff-2", "s1-swap-1"})  # fmt: skip
        assert conn.execute("SELECT count(*) FROM municipalities").fetchone()[0] == 312


def test_the_views_filter_before_the_callers_conditions(world: World) -> None:
    """security_barrier: a condition that fails on another provider's row never sees it (here
    a division by zero on B's patient would abort A's query if it ran before the view's
    restriction); every view of the three schemas is a barrier."""
    b_patient = world.patients["B1"]
    with world.login("A") as conn:
        rows = conn.execute(
            "SELECT count(*) FROM readings"
            " WHERE 1 / (CASE WHEN patient_id = %s THEN 0 ELSE 1 END) = 1",
            (b_patient,),
        ).fetchone()[0]
        assert rows == sum(1 for d in DEVICES for t in TIMES
                           if PROVIDER_OF.get(enrolment_of(d, t) or "") == "A")  # fmt: skip
    with world.admin() as conn:
        views = conn.execute(
            "SELECT n.nspname, c.relname, coalesce(c.reloptions, '{}') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY (%s) AND c.relkind = 'v'",
            (list(SCHEMAS.values()),),
        ).fetchall()
        others = conn.execute(
            "SELECT count(*) FROM pg_class c WHERE c.relkind <> 'v'"
            " AND c.relnamespace::regnamespace::text = ANY (%s)",
            (list(SCHEMAS.values()),),
        ).fetchone()[0]
    # provider 8 + 1 + 1, start-up 10 + 2 + 1, lab 17 + 1 + 1 + 1 + 1 + 1 (0019; messages_hourly
    # of 0021; the rollups of 0022; device_last_readings of 0024 and 0025; broker_drops of 0034;
    # operator_pages of 0036)
    assert len(views) == 10 + 13 + 22
    assert [v for v in views if "security_barrier=true" not in v[2]] == []
    assert others == 0  # nothing but views in the dashboard schemas


def test_a_provider_is_refused_everything_but_its_views(world: World) -> None:
    """Hand-written SQL: the tables, every partition or chunk (compressed ones and the
    rollup's too), the registry, the other schemas and the platform's functions."""
    with world.admin() as conn:
        targets = relations_outside(conn, "provider_dashboard")
        if world.form == "plain":
            pieces = conn.execute(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE i.inhparent = 'public.readings'::regclass"
            ).fetchall()
        else:
            pieces = conn.execute(
                "SELECT format('%I.%I', chunk_schema, chunk_name)"
                " FROM timescaledb_information.chunks"
            ).fetchall()
            compressed = conn.execute(
                "SELECT count(*) FROM timescaledb_information.chunks WHERE is_compressed"
            ).fetchone()[0]
            assert compressed > 0
        assert len(pieces) >= 2
        assert {p[0] for p in pieces} <= set(targets)
        assert {"public.readings", "public.readings_hourly", "public.patients",
                "public.dashboard_roles", "public.api_tokens", "public.ehl_dashboard_organisation",
                "startup_dashboard.readings", "lab_dashboard.patients"} <= set(targets)  # fmt: skip
    with world.login("A") as conn:
        assert not_refused(conn, targets) == []
        for call in (
            "SELECT public.ehl_pilot_day(now())",
            "SELECT public.ehl_store_form()",
            "SELECT public.ehl_ensure_reading_partitions(ARRAY[now()])",
        ):
            assert is_denied(conn, call), call
        # its own views are all it can name: nothing in public resolves to something readable
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] > 0


def test_a_provider_query_walks_the_patient_index(world: World) -> None:
    """The restriction is a semi-join on patient_id: among 200 other patients' hourly
    readings the planner goes from the provider's two patients to readings_patient_idx
    (patient_id, measured_at), the caller's time range in the index condition too (the
    barrier lets leakproof comparisons through). The time range on `at` as well prunes the
    partitions, and TimescaleDB's compressed chunks, which no index serves."""
    with world.login("A") as conn:
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT * FROM readings WHERE at >= '2026-04-01' AND at < '2026-04-02'"
                " AND measured_at >= '2026-04-01' AND measured_at < '2026-04-02'"
            )
        )
    assert "Index Cond: ((patient_id = p.id) AND (measured_at >= " in plan, plan
    assert "Seq Scan on readings" not in plan and "Seq Scan on _hyper" not in plan, plan


# -- start-up ----------------------------------------------------------------------------


@pytest.mark.parametrize("startup", ["S1", "S2"])
def test_a_startup_reads_its_own_devices_only(world: World, startup: str) -> None:
    own = {d for d, (s, _) in DEVICES.items() if s == startup}
    with world.login(startup) as conn:
        assert {r[0] for r in conn.execute("SELECT device_id FROM devices")} == own
        counts = dict(conn.execute("SELECT device_id, count(*) FROM readings GROUP BY 1"))
        assert counts == dict.fromkeys(own, len(TIMES))  # unassigned readings included
        hourly = dict(
            conn.execute("SELECT device_id, sum(readings) FROM readings_hourly GROUP BY 1")
        )
        assert hourly == dict.fromkeys(own, len(TIMES))
        types: Counter[str] = Counter()
        for d in own:
            types[DEVICES[d][1]] += len(TIMES)
        fleet = conn.execute(
            "SELECT device_type, sum(readings)::int FROM readings_fleet_hourly GROUP BY 1"
        ).fetchall()
        assert Counter(dict(fleet)) == types
        [(by_place,)] = conn.execute(
            "SELECT sum(readings)::int FROM readings_municipality_hourly"
        ).fetchall()
        assert by_place == len(own) * len(TIMES)
        for view in ("rejected_readings", "duplicate_readings", "device_messages",
                     "device_status_events"):  # fmt: skip
            seen = {r[0] for r in conn.execute(sql.SQL("SELECT device_id FROM {}").format(
                sql.Identifier(view)))}  # fmt: skip
            assert seen == own, view
        enrolled = {r[0] for r in conn.execute("SELECT device_id FROM enrolments")}
        assert enrolled == own - {"s2-oxim-2"}
        # no patient anywhere it can look
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'startup_dashboard'"
            )
        }
        assert "patient_id" not in columns
        assert "care_plan" not in columns
        assert columns.isdisjoint(SECRET_COLUMNS)
        assert conn.execute("SELECT id FROM organisation").fetchall() == [
            (world.organisations[startup],)
        ]
        with world.admin() as admin:
            targets = relations_outside(admin, "startup_dashboard")
        assert not_refused(conn, targets) == []  # fmt: skip


# -- lab ---------------------------------------------------------------------------------


def test_the_lab_role_reads_every_row_without_identifiers(world: World) -> None:
    with world.admin() as admin:
        expected = {
            view: admin.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
            ).fetchone()[0]
            for view, table in (
                ("readings", "readings"), ("readings_hourly", "readings_hourly"),
                ("patients", "patients"), ("devices", "devices"), ("enrolments", "enrolments"),
                ("alerts", "alerts"), ("organisations", "organisations"),
                ("rejected_readings", "rejected_readings"),
                ("duplicate_readings", "duplicate_readings"),
                ("device_messages", "device_messages"),
                ("device_status_events", "device_status_events"),
                ("municipalities", "municipalities"), ("mini_pilots", "mini_pilots"),
                ("mini_pilot_startups", "mini_pilot_startups"),
                ("mini_pilot_municipalities", "mini_pilot_municipalities"),
                ("evaluations", "evaluations"), ("sus_responses", "sus_responses"),
            )
        }  # fmt: skip
        targets = relations_outside(admin, "lab_dashboard")
    assert expected["readings"] > len(DEVICES) * len(TIMES) + CROWD
    with world.login("lab") as conn:
        for view, count in expected.items():
            got = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(view)))
            assert got.fetchone()[0] == count, view
        hourly = conn.execute("SELECT sum(readings) FROM readings_hourly").fetchone()[0]
        assert hourly == expected["readings"]
        visible = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert {s for s, _, _ in visible if not s.startswith(("_timescaledb", "timescaledb"))} == {
            "lab_dashboard"
        }
        assert [v for v in visible if v[2] in SECRET_COLUMNS] == []
        assert {t for _, t, _ in visible}.isdisjoint({"api_tokens", "dashboard_roles"})
        assert not_refused(conn, targets) == []  # fmt: skip


def test_no_table_of_ours_is_granted_to_public(world: World) -> None:
    """PostgreSQL grants no table to PUBLIC by default; nothing of ours does either (the
    platform's own functions are taken from PUBLIC too)."""
    with world.admin() as conn:
        granted = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE a.grantee = 0 AND c.relnamespace::regnamespace::text IN"
            " ('public', '_timescaledb_internal', 'provider_dashboard', 'startup_dashboard',"
            "  'lab_dashboard')"
            " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
            "                 AND d.objid = c.oid AND d.deptype = 'e')"
        ).fetchall()
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proname LIKE 'ehl\\_%'"
            " AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a"
            "      WHERE a.grantee = 0))"
        ).fetchall()
    assert granted == []
    assert functions == []


# -- nobody writes -----------------------------------------------------------------------

WRITES = [
    ("INSERT INTO {schema}.municipalities (istat_code, name, population, population_year,"
     " snai_class, snai_class_label, is_province_capital)"
     " VALUES ('999999', 'x', 1, 2024, 'A', 'x', false)"),
    "UPDATE {schema}.municipalities SET name = 'x'",
    "DELETE FROM {schema}.municipalities",
    "INSERT INTO public.municipalities (istat_code, name, population, population_year,"
    " snai_class, snai_class_label, is_province_capital)"
    " VALUES ('999999', 'x', 1, 2024, 'A', 'x', false)",
    "UPDATE public.readings SET value = 0",
    "DELETE FROM public.alerts",
    "DELETE FROM public.dashboard_roles",
    "TRUNCATE public.readings",
    "CREATE TABLE public.mine (i int)",
    "CREATE TABLE {schema}.mine (i int)",
    "CREATE VIEW {schema}.mine AS SELECT 1",
    "CREATE SCHEMA mine",
    "CREATE TEMP TABLE mine (i int)",
    "CREATE TEMP VIEW mine AS SELECT 1",
    "CREATE FUNCTION pg_temp.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "ALTER VIEW {schema}.municipalities RENAME TO mine",
    "COMMENT ON VIEW {schema}.municipalities IS 'mine'",
    "SELECT nextval('public.rejected_readings_id_seq')",
    "SELECT lo_create(0)",
    "SELECT lo_from_bytea(0, 'mine')",
]  # fmt: skip
COPIES = ["COPY {schema}.municipalities FROM STDIN", "COPY public.readings FROM STDIN"]


@pytest.mark.parametrize("who", ["A", "S1", "lab"])
@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "read-write"])
def test_no_role_can_write_anything(world: World, who: str, read_only: bool) -> None:
    """Read-only is only the roles' default: with it switched off, privileges still refuse
    every write (temporary tables and large objects included)."""
    schema = world.roles[who].schema
    with world.admin() as admin:
        before = admin.execute(
            "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM municipalities),"
            " (SELECT count(*) FROM pg_largeobject_metadata)"
        ).fetchone()
    refused = (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)
    with world.login(who) as conn:
        if not read_only:
            conn.execute("SET default_transaction_read_only = off")
            refused = (psycopg.errors.InsufficientPrivilege,)
        for statement in WRITES:
            with pytest.raises(refused):
                conn.execute(statement.format(schema=schema))
        for statement in COPIES:
            copy_refused = (*refused, psycopg.errors.WrongObjectType)  # COPY into a view
            with (
                pytest.raises(copy_refused),
                conn.cursor().copy(statement.format(schema=schema)) as copy,
            ):
                copy.write_row(("999999",))
    with world.admin() as admin:
        after = admin.execute(
            "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM municipalities),"
            " (SELECT count(*) FROM pg_largeobject_metadata)"
        ).fetchone()
    assert after == before


# -- the roles themselves ----------------------------------------------------------------


def test_roles_are_login_noinherit_with_limits_and_scram_passwords(world: World) -> None:
    with world.admin() as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        for key, credentials in world.roles.items():
            row = conn.execute(
                "SELECT r.rolcanlogin, r.rolinherit, r.rolsuper, r.rolcreaterole, r.rolcreatedb,"
                " r.rolbypassrls, r.rolconnlimit, r.rolconfig, a.rolpassword FROM pg_roles r"
                " JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = %s",
                (credentials.role_name,),
            ).fetchone()
            login_, inherit, superuser, createrole, createdb, bypass, limit, config, pw = row
            assert (login_, inherit, superuser, createrole, createdb, bypass) == (
                True, False, False, False, False, False)  # fmt: skip
            assert limit == (10 if key == "lab" else 5)
            assert "default_transaction_read_only=on" in config
            assert "statement_timeout=10s" in config
            assert pw.startswith("SCRAM-SHA-256$4096:")
            assert credentials.password not in pw
            assert credentials.role_name == role_name(
                credentials.kind, credentials.organisation_id, database
            )
            assert conn.execute(
                "SELECT role_name, kind FROM dashboard_roles WHERE role_name = %s",
                (credentials.role_name,),
            ).fetchall() == [(credentials.role_name, credentials.kind)]
        # PUBLIC keeps CONNECT but not TEMPORARY on the database
        acl = conn.execute(
            "SELECT a.privilege_type FROM pg_database d, aclexplode(d.datacl) a"
            " WHERE d.datname = current_database() AND a.grantee = 0"
        ).fetchall()
        assert acl == [("CONNECT",)]


def test_passwords_are_stored_nowhere_in_our_tables(world: World) -> None:
    passwords = [c.password for c in world.roles.values()]
    with world.admin() as conn:
        columns = conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname), quote_ident(a.attname)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public'"
            " AND a.atttypid IN ('text'::regtype, 'name'::regtype, 'bytea'::regtype,"
            "                    'jsonb'::regtype, 'text[]'::regtype, 'varchar'::regtype)"
        ).fetchall()
        assert ("public.dashboard_roles", "role_name") in columns
        for table, column in columns:
            found = conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM {} WHERE EXISTS"
                    " (SELECT 1 FROM unnest(%s::text[]) p WHERE strpos({}::text, p) > 0)"
                ).format(sql.SQL(table), sql.SQL(column)),
                (passwords,),
            ).fetchone()[0]
            assert found == 0, f"{table}.{column}"
