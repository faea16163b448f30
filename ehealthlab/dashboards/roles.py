"""Database roles for Grafana's PostgreSQL data sources (docs/dashboard-roles.md).

Each health provider's and start-up's Grafana organisation logs in as a role of its own that
reads only its organisation's rows, through the security-barrier views of its schema
(`provider_dashboard`, `startup_dashboard`; migration 0019 says why views and not policies);
operations and CMTo share one `lab` role reading `lab_dashboard`. A role has USAGE on its one
schema, SELECT on its views and CONNECT on the database, nothing else; it is LOGIN NOINHERIT,
read-only by default, with a statement timeout and a small connection limit. The password is
generated here, returned once, and sent to the server only as a SCRAM-SHA-256 verifier
computed on this side (so no statement log ever holds it); nothing of ours stores it.

Creating and dropping roles needs a connection as a role with CREATEROLE that owns the
database and ran the migrations (it grants SELECT on the views it owns and changes the
database's privileges); the tests use a superuser.

The pure parts (names, settings, statements) are apart from the functions that run them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, get_args
from uuid import UUID

import psycopg
from psycopg import sql

from ehealthlab.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StoreError,
)
from ehealthlab.store.db import Connection

Kind = Literal["provider", "startup", "lab"]
KINDS: tuple[Kind, ...] = get_args(Kind)

#: the schema of views each kind of role reads
SCHEMAS: dict[Kind, str] = {
    "provider": "provider_dashboard",
    "startup": "startup_dashboard",
    "lab": "lab_dashboard",
}
#: at most this many sessions at once (Grafana's "max open connections" must not exceed it)
CONNECTION_LIMITS: dict[Kind, int] = {"provider": 5, "startup": 5, "lab": 10}
STATEMENT_TIMEOUT = "10s"
IDLE_IN_TRANSACTION_TIMEOUT = "60s"
PASSWORD_BYTES = 32
#: the functions that create large objects (lo_import from a server file is superuser-only)
LARGE_OBJECT_CREATORS = ("lo_create(oid)", "lo_creat(integer)", "lo_from_bytea(oid, bytea)")

ROLE_PREFIX = "ehl_dash_"
_ROLE_NAME = re.compile(
    r"^ehl_dash_(?:(?P<kind>provider|startup)_(?P<org>[0-9a-f]{12})|lab)_(?P<db>[0-9a-f]{8})$"
)


# -- pure ------------------------------------------------------------------------------------


def database_tag(database: str) -> str:
    """Eight hex digits naming the database in its roles' names.

    Roles belong to the whole cluster and the registry to one database: the tag keeps two
    databases on one server (tests, a staging copy beside production) from sharing a role.
    """
    return hashlib.sha256(database.encode()).hexdigest()[:8]


def role_name(kind: Kind, organisation_id: UUID | None, database: str) -> str:
    """The role's name: `ehl_dash_provider_<12 hex of the organisation>_<database tag>`,
    `ehl_dash_startup_…_…`, or `ehl_dash_lab_<database tag>`; lower-case ASCII, 39 bytes at
    most (PostgreSQL allows 63), so it never needs quoting (it is quoted all the same)."""
    if kind == "lab":
        if organisation_id is not None:
            raise InvalidInputError("the lab role belongs to no organisation")
        return f"{ROLE_PREFIX}lab_{database_tag(database)}"
    if kind not in KINDS:
        raise InvalidInputError(f"kind {kind!r}: not one of {', '.join(KINDS)}")
    if organisation_id is None:
        raise InvalidInputError(f"a {kind} role needs its organisation")
    return f"{ROLE_PREFIX}{kind}_{organisation_id.hex[:12]}_{database_tag(database)}"


def is_role_of_database(name: str, database: str) -> bool:
    """True when `name` has the form of a dashboard role name of this database."""
    match = _ROLE_NAME.match(name)
    return match is not None and match["db"] == database_tag(database)


def kind_of_role_name(name: str) -> Kind | None:
    match = _ROLE_NAME.match(name)
    if match is None:
        return None
    return _kind(match["kind"] or "lab")


def role_settings(kind: Kind) -> tuple[tuple[str, str], ...]:
    """Session defaults stored on the role (ALTER ROLE ... SET). Not a security boundary — a
    session may change them — but what Grafana's queries run with."""
    return (
        ("default_transaction_read_only", "on"),
        ("statement_timeout", STATEMENT_TIMEOUT),
        ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT),
        # its views first; `public` after them for TimescaleDB's time_bucket (the tables
        # there stay unreadable)
        ("search_path", f"{SCHEMAS[kind]}, public"),
    )


def create_statements(
    name: str, kind: Kind, database: str, verifier: str, comment: str
) -> list[sql.Composed]:
    """The statements creating role `name` of `kind`, with its SCRAM `verifier`."""
    role = sql.Identifier(name)
    schema = sql.Identifier(SCHEMAS[kind])
    db = sql.Identifier(database)
    statements = [
        sql.SQL(
            "CREATE ROLE {} WITH LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE"
            " NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}"
        ).format(role, sql.Literal(CONNECTION_LIMITS[kind]), sql.Literal(verifier)),
        sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(comment)),
    ]
    for setting, value in role_settings(kind):
        if setting == "search_path":
            statements.append(
                sql.SQL("ALTER ROLE {} SET search_path TO {}, public").format(role, schema)
            )
        else:
            statements.append(
                sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                    role, sql.Identifier(setting), sql.Literal(value)
                )
            )
    statements += [
        # PUBLIC may create temporary tables in a new database; a dashboard role must not
        # write even those. The owner (the platform's role, whose ingest stages readings in
        # a temporary table) keeps the privilege.
        sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(db),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, role),
    ]
    return statements


def new_password() -> str:
    """A random password (256 bits, URL-safe: pastes into Grafana's form as it is)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleCredentials:
    """What a Grafana data source needs; the password exists only here, shown once."""

    role_name: str
    password: str = field(repr=False)
    kind: Kind = "lab"
    organisation_id: UUID | None = None
    organisation_name: str | None = None
    database: str = ""
    schema: str = ""
    connection_limit: int = 0
    #: what the operator should know (a hardening this connection could not do)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class DashboardRole:
    """A dashboard role of this database: registered, in the cluster, or both."""

    role_name: str
    kind: Kind
    organisation_id: UUID | None
    organisation_name: str | None
    created_at: datetime | None
    registered: bool  # a row in dashboard_roles (gone when its organisation was deleted)
    exists: bool  # a role in the cluster
    can_login: bool


# -- I/O -------------------------------------------------------------------------------------


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """psycopg's errors into the platform's, naming what the operator must fix."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDeniedError(
            f"cannot {action}: {exc.diag.message_primary}; connect as the role that owns the "
            "database and ran the migrations, with CREATEROLE"
        ) from None
    except psycopg.errors.DuplicateObject as exc:
        raise ConflictError(f"cannot {action}: {exc.diag.message_primary}") from None
    except psycopg.errors.UniqueViolation:
        raise ConflictError(f"cannot {action}: it has a dashboard role already") from None
    except psycopg.errors.UndefinedTable as exc:
        raise StoreError(
            f"cannot {action}: {exc.diag.message_primary}; run `ehealthlab db migrate`"
        ) from None
    except psycopg.Error as exc:
        raise StoreError(f"cannot {action}: {exc.diag.message_primary or exc}") from None


def _current_database(conn: Connection) -> str:
    row = conn.execute("SELECT current_database()").fetchone()
    if row is None:
        raise StoreError("the server did not say which database this is")
    return str(row[0])


def _role_exists(conn: Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (name,)
    ).fetchone()
    return bool(row and row[0])


def _verifier(conn: Connection, password: str, name: str) -> str:
    """The SCRAM-SHA-256 verifier of `password`, computed by libpq on this side."""
    return conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()


def _organisation(conn: Connection, organisation_id: UUID) -> tuple[str, str]:
    row = conn.execute(
        "SELECT kind, name FROM organisations WHERE id = %s", (organisation_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no organisation {organisation_id}")
    return str(row[0]), str(row[1])


def create_role(
    conn: Connection, organisation_id: UUID | None, kind: Kind | None = None
) -> RoleCredentials:
    """Create the dashboard role of a provider or start-up (`organisation_id`), or the lab
    role (`organisation_id` None); `kind` defaults to the organisation's (or `lab`) and must
    agree with it. ConflictError when the role exists (rotate its password instead)."""
    action = "create the dashboard role"
    with _translated(action), conn.transaction():
        organisation_name: str | None = None
        if organisation_id is None:
            if kind not in (None, "lab"):
                raise InvalidInputError(f"a {kind} role needs its organisation")
            kind = "lab"
        else:
            organisation_kind, organisation_name = _organisation(conn, organisation_id)
            if organisation_kind == "operator":
                raise InvalidInputError(
                    f"{organisation_name} is the operator: operations and CMTo read through "
                    "the lab role (--lab)"
                )
            if kind is None:
                kind = "provider" if organisation_kind == "provider" else "startup"
            if kind != organisation_kind:
                raise InvalidInputError(
                    f"{organisation_name} is a {organisation_kind}, not a {kind}"
                )
        database = _current_database(conn)
        name = role_name(kind, organisation_id, database)
        registered = conn.execute(
            "SELECT role_name FROM dashboard_roles"
            " WHERE organisation_id = %s OR (%s::uuid IS NULL AND kind = 'lab')",
            (organisation_id, organisation_id),
        ).fetchone()
        if registered is not None or _role_exists(conn, name):
            raise ConflictError(
                f"role {registered[0] if registered else name} exists already; replace its "
                "password with `ehealthlab dashboards roles rotate`",
                role_name=name,
            )
        password = new_password()
        whose = "the LAB (operations, CMTo)" if organisation_id is None else f"{organisation_id}"
        comment = f"ehealthlab {kind} dashboard role of {whose} in database {database}"
        for statement in create_statements(
            name, kind, database, _verifier(conn, password, name), comment
        ):
            conn.execute(statement)
        warnings = _forbid_large_objects(conn)
        conn.execute(
            "INSERT INTO dashboard_roles (role_name, organisation_id, kind) VALUES (%s, %s, %s)",
            (name, organisation_id, kind),
        )
    return RoleCredentials(
        role_name=name,
        password=password,
        kind=kind,
        organisation_id=organisation_id,
        organisation_name=organisation_name,
        database=database,
        schema=SCHEMAS[kind],
        connection_limit=CONNECTION_LIMITS[kind],
        warnings=warnings,
    )


def _forbid_large_objects(conn: Connection) -> tuple[str, ...]:
    """Take from PUBLIC the functions that create large objects, the one write PostgreSQL
    allows any role without a privilege (a dashboard role could turn read-only off and store
    bytes in pg_largeobject). They belong to the bootstrap superuser: when this connection
    may not, a warning says what a superuser should run."""
    still = _public_large_object_creators(conn)
    if not still:
        return ()
    statement = f"REVOKE EXECUTE ON FUNCTION {', '.join(still)} FROM PUBLIC"
    try:
        with conn.transaction():
            # names from pg_proc itself, not from input; a role that may execute them but is
            # not their owner gets a warning, not an error, and nothing changes
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        pass
    if _public_large_object_creators(conn):
        return (
            "any role of this database, dashboard roles included, may still create large "
            f"objects; as a superuser, run in this database: {statement}",
        )
    return ()


def _public_large_object_creators(conn: Connection) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT p.oid::regprocedure FROM pg_proc p"
            " WHERE p.oid = ANY (%s::regprocedure[])"
            " AND (p.proacl IS NULL OR EXISTS ("
            "   SELECT 1 FROM aclexplode(p.proacl) a"
            "   WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))"
            " ORDER BY 1",
            (list(LARGE_OBJECT_CREATORS),),
        ).fetchall()
    ]


def rotate_password(conn: Connection, name: str) -> RoleCredentials:
    """A new password for a registered dashboard role; the old one stops working."""
    with _translated("rotate the password"), conn.transaction():
        row = conn.execute(
            "SELECT d.kind, d.organisation_id, o.name FROM dashboard_roles d"
            " LEFT JOIN organisations o ON o.id = d.organisation_id WHERE d.role_name = %s",
            (name,),
        ).fetchone()
        if row is None or not _role_exists(conn, name):
            raise NotFoundError(f"no dashboard role {name!r} in this database")
        kind = _kind(row[0])
        password = new_password()
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(_verifier(conn, password, name))
            )
        )
        database = _current_database(conn)
    return RoleCredentials(
        role_name=name,
        password=password,
        kind=kind,
        organisation_id=row[1],
        organisation_name=row[2],
        database=database,
        schema=SCHEMAS[kind],
        connection_limit=CONNECTION_LIMITS[kind],
    )


def revoke_role(conn: Connection, name: str) -> bool:
    """Take a dashboard role away: no more logins, no privileges, its sessions ended, the role
    dropped and its registry row deleted. Idempotent: False when there was nothing to do.

    Only dashboard roles of this database are touched: registered ones, or unregistered ones
    whose name has this database's tag (left behind when their organisation was deleted).
    Needs an autocommit connection (or none in a transaction): the privileges are gone and
    logins refused, committed, before the role's sessions are ended, so none reconnects.
    """
    action = f"revoke dashboard role {name!r}"
    with _translated(action):
        database = _current_database(conn)
        registered = conn.execute(
            "SELECT 1 FROM dashboard_roles WHERE role_name = %s", (name,)
        ).fetchone()
        if registered is None and not is_role_of_database(name, database):
            raise InvalidInputError(f"{name!r} is not a dashboard role of this database")
        exists = _role_exists(conn, name)
        role = sql.Identifier(name)
        if exists:
            with conn.transaction():
                # the privileges of the role, which DROP OWNED and ending its sessions need
                # when the operator is not a superuser (a CREATEROLE role may grant them)
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                # every privilege it holds here (views, schema, database) and anything it owns
                conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
            _end_sessions(conn, name)
        with conn.transaction():
            if exists:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            conn.execute("DELETE FROM dashboard_roles WHERE role_name = %s", (name,))
    return exists or registered is not None


def _end_sessions(conn: Connection, name: str) -> None:
    """End the role's open sessions (best effort: it can no longer read anything anyway)."""
    try:
        with conn.transaction():
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = %s AND pid <> pg_backend_pid()",
                (name,),
            )
    except psycopg.errors.InsufficientPrivilege:
        pass


def revoke_for_organisation(conn: Connection, organisation_id: UUID) -> list[str]:
    """Revoke every dashboard role of an organisation (its registered ones, and the role its
    name would have, found even after the organisation's row was deleted); the names revoked.
    Call it when an organisation leaves the pilot, before or after deleting its row."""
    with _translated("revoke the organisation's dashboard roles"):
        database = _current_database(conn)
        names = {
            str(r[0])
            for r in conn.execute(
                "SELECT role_name FROM dashboard_roles WHERE organisation_id = %s",
                (organisation_id,),
            ).fetchall()
        }
        candidates = [role_name(k, organisation_id, database) for k in ("provider", "startup")]
        names.update(n for n in candidates if _role_exists(conn, n))
    return [n for n in sorted(names) if revoke_role(conn, n)]


def refresh_grants(conn: Connection) -> list[str]:
    """Grant every registered role SELECT on all the views its schema holds now: a migration
    that adds a view to a dashboard schema is followed by this (GRANT ... ON ALL TABLES
    covers only the views that existed when the role was created). The roles granted."""
    with _translated("refresh the dashboard roles' grants"), conn.transaction():
        rows = conn.execute(
            "SELECT d.role_name, d.kind FROM dashboard_roles d"
            " JOIN pg_roles r ON r.rolname = d.role_name ORDER BY d.role_name"
        ).fetchall()
        for name, kind in rows:
            role = sql.Identifier(str(name))
            schema = sql.Identifier(SCHEMAS[_kind(kind)])
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role))
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, role)
            )
    return [str(r[0]) for r in rows]


def list_roles(conn: Connection) -> list[DashboardRole]:
    """The dashboard roles of this database: the registry, and roles in the cluster named for
    this database that the registry no longer holds (their organisation deleted)."""
    with _translated("list the dashboard roles"), conn.transaction():
        database = _current_database(conn)
        rows = conn.execute(
            "SELECT d.role_name, d.kind, d.organisation_id, o.name, d.created_at,"
            " r.rolname IS NOT NULL, coalesce(r.rolcanlogin, false)"
            " FROM dashboard_roles d"
            " LEFT JOIN organisations o ON o.id = d.organisation_id"
            " LEFT JOIN pg_roles r ON r.rolname = d.role_name"
            " ORDER BY d.kind, o.name, d.role_name"
        ).fetchall()
        found = [
            DashboardRole(str(n), _kind(k), org, org_name, created, True, exists, login)
            for n, k, org, org_name, created, exists, login in rows
        ]
        registered = {r.role_name for r in found}
        for name, login in conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE starts_with(rolname, %s)"
            " ORDER BY rolname",
            (ROLE_PREFIX,),
        ).fetchall():
            kind = kind_of_role_name(str(name))
            if name in registered or kind is None or not is_role_of_database(name, database):
                continue
            found.append(DashboardRole(str(name), kind, None, None, None, False, True, login))
    return found


def _kind(value: object) -> Kind:
    for kind in KINDS:
        if value == kind:
            return kind
    raise StoreError(f"dashboard_roles holds an unknown kind {value!r}")
