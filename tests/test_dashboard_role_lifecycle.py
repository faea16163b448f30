"""The dashboard roles' life: names derived from organisation and database, creation refused
when it makes no sense, passwords rotated, grants refreshed for views added later, roles
revoked with their organisation (by function and by `ehealthlab dashboards roles`), and an
owner that is not a superuser doing all of it. What the roles may read is in
test_dashboard_roles.py."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import create_database, drop_database, with_database
from dashboard_roles_world import is_denied, login, revoke_all
from psycopg import sql
from pydantic import SecretStr

from ehealthlab.dashboards.roles import (
    RoleCredentials,
    create_role,
    database_tag,
    is_role_of_database,
    list_roles,
    refresh_grants,
    revoke_for_organisation,
    revoke_role,
    role_name,
    rotate_password,
)
from ehealthlab.dashboards.roles_command import register_roles
from ehealthlab.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from ehealthlab.settings import Settings
from ehealthlab.store.migrate import migrate
from ehealthlab.store.reference import load_municipalities


@pytest.fixture
def store(store_url: str) -> Iterator[str]:
    """A fresh store of each form for tests that create and revoke roles."""
    try:
        yield store_url
    finally:
        revoke_all(store_url)


def new_organisation(conn: psycopg.Connection, kind: str) -> uuid.UUID:
    return conn.execute(
        "INSERT INTO organisations (kind, name) VALUES (%s, %s) RETURNING id",
        (kind, f"{kind} {uuid.uuid4().hex[:8]}"),
    ).fetchone()[0]


def test_names_are_derived_and_recognised() -> None:
    organisation = uuid.UUID("3f2a9c1b-0d4e-4a5b-8c6d-7e8f9a0b1c2d")
    tag = database_tag("ehl")
    assert role_name("provider", organisation, "ehl") == f"ehl_dash_provider_3f2a9c1b0d4e_{tag}"
    assert role_name("startup", organisation, "ehl") == f"ehl_dash_startup_3f2a9c1b0d4e_{tag}"
    assert role_name("lab", None, "ehl") == f"ehl_dash_lab_{tag}"
    assert role_name("lab", None, "other") != role_name("lab", None, "ehl")
    assert is_role_of_database(role_name("provider", organisation, "ehl"), "ehl")
    assert not is_role_of_database(role_name("provider", organisation, "ehl"), "other")
    assert not is_role_of_database("postgres", "ehl")
    with pytest.raises(InvalidInputError):
        role_name("provider", None, "ehl")
    with pytest.raises(InvalidInputError):
        role_name("lab", organisation, "ehl")


def test_creation_refuses_what_makes_no_sense(store: str) -> None:
    with psycopg.connect(store, autocommit=True) as conn:
        provider = new_organisation(conn, "provider")
        operator = new_organisation(conn, "operator")
        first = create_role(conn, provider)
        assert first.kind == "provider"
        with pytest.raises(ConflictError):
            create_role(conn, provider)
        with pytest.raises(InvalidInputError, match="lab role"):
            create_role(conn, operator)
        with pytest.raises(InvalidInputError, match="not a startup"):
            create_role(conn, provider, "startup")
        with pytest.raises(NotFoundError):
            create_role(conn, uuid.uuid4())
        create_role(conn, None)
        with pytest.raises(ConflictError):
            create_role(conn, None, "lab")
        with pytest.raises(InvalidInputError, match="not a dashboard role"):
            revoke_role(conn, "postgres")
        user = conn.execute("SELECT current_user").fetchone()[0]
        with pytest.raises(InvalidInputError, match="not a dashboard role"):
            revoke_role(conn, user)
        assert conn.execute("SELECT count(*) FROM dashboard_roles").fetchone()[0] == 2


def test_rotating_a_password_replaces_it(store: str) -> None:
    with psycopg.connect(store, autocommit=True) as conn:
        credentials = create_role(conn, new_organisation(conn, "startup"))
        rotated = rotate_password(conn, credentials.role_name)
    assert rotated.password != credentials.password
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        login(store, credentials)
    with login(store, rotated) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 0


def test_a_view_added_later_is_granted_by_refresh(store: str) -> None:
    with psycopg.connect(store, autocommit=True) as admin:
        credentials = create_role(admin, new_organisation(admin, "provider"))
        admin.execute(  # what a later migration would add
            "CREATE VIEW provider_dashboard.later WITH (security_barrier) AS SELECT 1 AS one"
        )
        with login(store, credentials) as conn:
            assert is_denied(conn, "SELECT * FROM later")
            assert refresh_grants(admin) == [credentials.role_name]
            assert conn.execute("SELECT * FROM later").fetchall() == [(1,)]


# -- revoking ----------------------------------------------------------------------------


def test_revoking_an_organisation_ends_its_logins(store: str) -> None:
    with psycopg.connect(store, autocommit=True) as admin:
        provider = new_organisation(admin, "provider")
        admin.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label) VALUES (%s, 'h', 'P')",
            (provider,),
        )
        credentials = create_role(admin, provider)
        session = login(store, credentials)
        assert session.execute("SELECT count(*) FROM patients").fetchone()[0] == 1
        assert revoke_for_organisation(admin, provider) == [credentials.role_name]
        with pytest.raises(psycopg.OperationalError):
            login(store, credentials)
        with pytest.raises(psycopg.Error):  # its open session was ended
            session.execute("SELECT count(*) FROM patients")
        session.close()
        assert (
            admin.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname = %s", (credentials.role_name,)
            ).fetchone()[0]
            == 0
        )
        assert admin.execute("SELECT count(*) FROM dashboard_roles").fetchone()[0] == 0
        # again: nothing to do
        assert revoke_for_organisation(admin, provider) == []
        assert revoke_role(admin, credentials.role_name) is False


def run(store: str, tmp_path: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ehealthlab")
    commands = parser.add_subparsers(dest="command", required=True)
    dashboards = commands.add_parser("dashboards")
    register_roles(dashboards.add_subparsers(dest="dashboards_command", required=True))
    args = parser.parse_args(["dashboards", *argv])
    settings = Settings(state_dir=tmp_path / "no-stack", database_url=SecretStr(store))
    return args.handler(args, settings)


def test_deleting_an_organisation_leaves_its_role_blind_until_the_command_drops_it(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(store, autocommit=True) as admin:
        startup = new_organisation(admin, "startup")
    assert run(store, tmp_path, "roles", "create", "--organisation", str(startup)) == 0
    printed = capsys.readouterr().out
    fields = dict(line.split(None, 1) for line in printed.splitlines()[1:4])
    assert "shown only this once" in printed
    credentials = RoleCredentials(fields["user"], fields["password"])
    with login(store, credentials) as conn:
        assert conn.execute("SELECT count(*) FROM organisation").fetchone()[0] == 1
        with psycopg.connect(store, autocommit=True) as admin:
            admin.execute("DELETE FROM organisations WHERE id = %s", (startup,))
            assert admin.execute("SELECT count(*) FROM dashboard_roles").fetchone()[0] == 0
        # still a role, but no longer anyone's: its views are empty
        assert conn.execute("SELECT count(*) FROM organisation").fetchone()[0] == 0
    assert run(store, tmp_path, "roles", "list") == 0
    assert "unregistered" in capsys.readouterr().out
    assert run(store, tmp_path, "roles", "revoke", "--organisation", str(startup)) == 0
    assert capsys.readouterr().out == f"revoked {credentials.role_name}\n"
    with pytest.raises(psycopg.OperationalError):
        login(store, credentials)
    assert run(store, tmp_path, "roles", "revoke", credentials.role_name) == 0
    assert capsys.readouterr().out == "nothing to revoke\n"


def test_a_role_without_its_registry_row_sees_nothing(store: str) -> None:
    """Fail closed: the views look the organisation up in dashboard_roles each query."""
    with psycopg.connect(store, autocommit=True) as admin:
        provider = new_organisation(admin, "provider")
        admin.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label) VALUES (%s, 'h', 'P')",
            (provider,),
        )
        credentials = create_role(admin, provider)
        with login(store, credentials) as conn:
            assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 1
            admin.execute("DELETE FROM dashboard_roles")
            assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 0
        assert [r.registered for r in list_roles(admin)] == [False]


def test_the_lab_role_is_created_and_listed_by_the_command(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(store, tmp_path, "roles", "create", "--lab") == 0
    printed = capsys.readouterr().out
    assert "the LAB (operations and CMTo)" in printed
    user = next(line.split()[1] for line in printed.splitlines() if line.startswith("  user"))
    assert run(store, tmp_path, "roles", "list") == 0
    listed = capsys.readouterr().out
    assert user in listed and "active" in listed
    assert run(store, tmp_path, "roles", "revoke", user) == 0
    assert capsys.readouterr().out == f"revoked {user}\n"


# -- an operator that is not a superuser -------------------------------------------------


def test_an_owner_with_createrole_can_create_and_revoke(plain_admin_url: str) -> None:
    """Production: the database's owner, which ran the migrations, with CREATEROLE (not a
    superuser). It cannot take large objects from PUBLIC, and is told so."""
    operator = "ehl_operator_" + uuid.uuid4().hex[:8]
    password = uuid.uuid4().hex
    name = None
    with psycopg.connect(plain_admin_url, autocommit=True) as su:
        su.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(operator), sql.Literal(password)
            )
        )
    try:
        name = create_database(plain_admin_url)
        with psycopg.connect(plain_admin_url, autocommit=True) as su:
            su.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(name), sql.Identifier(operator)
                )
            )
        url = with_database(plain_admin_url, name)
        with psycopg.connect(url, user=operator, password=password, autocommit=True) as conn:
            migrate(conn, "plain")
            load_municipalities(conn)
            provider = new_organisation(conn, "provider")
            credentials = create_role(conn, provider)
            assert any("large objects" in w for w in credentials.warnings)
            with login(url, credentials) as role:
                assert role.execute("SELECT count(*) FROM municipalities").fetchone()[0] == 312
                assert is_denied(role, "SELECT * FROM public.patients")
                role.execute("SET default_transaction_read_only = off")
                assert is_denied(role, "CREATE TEMP TABLE mine (i int)")
            assert revoke_for_organisation(conn, provider) == [credentials.role_name]
            with pytest.raises(psycopg.OperationalError):
                login(url, credentials)
    finally:
        if name is not None:
            drop_database(plain_admin_url, name)
        with psycopg.connect(plain_admin_url, autocommit=True) as su:
            su.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(operator)))
