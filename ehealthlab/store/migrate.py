"""Ordered, recorded, rerunnable schema migrations for both physical forms of the store.

A migration is `NNNN_name.sql` (the same on both forms) or the pair
`NNNN_name.plain.sql` / `NNNN_name.timescale.sql`. Each is applied in its own transaction
together with its row in `schema_migrations`, under an advisory lock, so two `db migrate`
runs at once are safe and a rerun applies nothing. The form is chosen once, when the first
migration is applied, and recorded; later runs keep it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import psycopg

from ehealthlab.errors import MigrationError
from ehealthlab.settings import StoreForm
from ehealthlab.store.db import Connection

Form = Literal["plain", "timescale"]
FORMS: tuple[Form, ...] = ("plain", "timescale")

_FILE_NAME = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<form>plain|timescale))?\.sql$"
)
_LOCK_KEY = 0x65686C6D  # "ehlm": one advisory lock for every migrating process


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    common_sql: str | None = None
    form_sql: dict[str, str] = field(default_factory=dict)

    def sql_for(self, form: Form) -> str:
        if self.common_sql is not None:
            return self.common_sql
        try:
            return self.form_sql[form]
        except KeyError:
            raise MigrationError(
                f"migration {self.version:04d}_{self.name} has no {form} form"
            ) from None

    def checksum(self, form: Form) -> str:
        return hashlib.sha256(self.sql_for(form).encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    form: Form
    applied: list[int]
    already_applied: list[int]


def discover() -> list[Migration]:
    """The packaged migrations, in order; a malformed set is a programming error."""
    found: dict[int, Migration] = {}
    folder = resources.files("ehealthlab.store") / "migrations"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        version, name, form = int(match["version"]), match["name"], match["form"]
        text = entry.read_text(encoding="utf-8")
        previous = found.get(version, Migration(version, name))
        if previous.name != name:
            raise MigrationError(f"two migrations numbered {version:04d}: {previous.name}, {name}")
        if form is None:
            found[version] = Migration(version, name, text, previous.form_sql)
        else:
            found[version] = Migration(
                version, name, previous.common_sql, {**previous.form_sql, form: text}
            )
    for migration in found.values():
        common_only = migration.common_sql is not None and not migration.form_sql
        pair_only = migration.common_sql is None and set(migration.form_sql) == set(FORMS)
        if not (common_only or pair_only):
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} needs either one common "
                "file or exactly one .plain.sql and one .timescale.sql"
            )
    return [found[v] for v in sorted(found)]


def timescale_available(conn: Connection) -> bool:
    """True when this server can run the TimescaleDB form (installed and preloaded)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone()
    available, created = row if row is not None else (False, False)
    if created:
        return True
    if not available:
        return False
    try:  # only superusers and pg_read_all_settings may read it
        with conn.transaction():
            preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return False
    return preload is not None and "timescaledb" in str(preload[0])


def recorded_form(conn: Connection) -> Form | None:
    """The form this database was built with, or None if no migration ran yet."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT form FROM schema_migrations ORDER BY version LIMIT 1").fetchone()
    if row is None:
        return None
    for form in FORMS:
        if row[0] == form:
            return form
    raise MigrationError(f"schema_migrations records an unknown form {row[0]!r}")


def choose_form(conn: Connection, requested: StoreForm) -> Form:
    recorded = recorded_form(conn)
    if recorded is not None:
        if requested not in ("auto", recorded):
            raise MigrationError(
                f"this database was built in the {recorded} form; EHEALTHLAB_STORE_FORM="
                f"{requested} cannot change it (migrate a new database instead)"
            )
        return recorded
    can_timescale = timescale_available(conn)
    if requested == "timescale" and not can_timescale:
        raise MigrationError(
            "EHEALTHLAB_STORE_FORM=timescale, but this server has no TimescaleDB loaded "
            "(the extension must be installed and in shared_preload_libraries)"
        )
    if requested == "auto":
        return "timescale" if can_timescale else "plain"
    return requested


def migrate(conn: Connection, requested: StoreForm = "auto") -> MigrationReport:
    """Apply every migration not yet applied; safe to rerun and to run concurrently."""
    if not conn.autocommit:
        raise MigrationError("migrate() needs an autocommit connection (one transaction each)")
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, form text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        form = choose_form(conn, requested)
        applied_before = {
            int(version): str(checksum)
            for version, checksum in conn.execute(
                "SELECT version, checksum FROM schema_migrations"
            ).fetchall()
        }
        applied: list[int] = []
        for migration in discover():
            checksum = migration.checksum(form)
            if migration.version in applied_before:
                if applied_before[migration.version] != checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead of editing an applied one"
                    )
                continue
            _apply(conn, migration, form, checksum)
            applied.append(migration.version)
        return MigrationReport(form, applied, sorted(applied_before))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _apply(conn: Connection, migration: Migration, form: Form, checksum: str) -> None:
    try:
        with conn.transaction():
            conn.execute(migration.sql_for(form))
            conn.execute(
                "INSERT INTO schema_migrations (version, name, form, checksum)"
                " VALUES (%s, %s, %s, %s)",
                (migration.version, migration.name, form, checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {migration.version:04d}_{migration.name} ({form}) failed: "
            f"{exc.diag.message_primary or exc}"
        ) from exc
