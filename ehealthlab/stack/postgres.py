"""A private PostgreSQL cluster on loopback, made with the distribution's initdb and pg_ctl.

Used by `ehealthlab stack` and by the test fixtures. The cluster listens on 127.0.0.1 only,
over TCP only (no Unix socket, so no socket path to fit in 107 bytes), with one superuser
whose password is checked with SCRAM. As root the programs run as `postgres`, which then owns
the directory (see `programs.place_for` for a directory it cannot reach).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from ehealthlab.errors import StackError
from ehealthlab.stack.ports import LOOPBACK, PortTakenError, free_port
from ehealthlab.stack.programs import (
    PostgresPrograms,
    ServiceAccount,
    find_postgres,
    log_since,
    log_size,
    log_tail,
    process_is_alive,
    read_pid,
    run_program,
)

#: our settings live in their own file, rewritten at every start (the port may change)
SETTINGS_FILE = "ehealthlab.conf"
#: what the tests trade for speed: a crash of the machine may lose or corrupt their data
NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresServer:
    """One cluster in `directory` (data in `data/`, log in `postgresql.log`).

    `directory` must be one the server's account can use: see `programs.place_for`. The
    password is the superuser's; give the recorded one for an existing cluster.
    """

    host = LOOPBACK

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        user: str = "ehealthlab",
        database: str = "ehealthlab",
        fsync: bool = True,
        preload_libraries: Sequence[str] = (),
        parameters: Mapping[str, str] | None = None,
        programs: PostgresPrograms | None = None,
        account: ServiceAccount | None = None,
    ) -> None:
        self.directory = directory.absolute()
        self.port = port if port is not None else free_port()
        self.password = password if password is not None else secrets.token_hex(16)
        self.user = user
        self.database = database
        self.fsync = fsync
        self.preload_libraries = tuple(preload_libraries)
        self.parameters = dict(parameters or {})
        self._programs = programs
        self._account = account

    @property
    def programs(self) -> PostgresPrograms:
        """Found on first use, so asking whether it runs needs no installed programs."""
        if self._programs is None:
            self._programs = find_postgres()
        return self._programs

    @property
    def account(self) -> ServiceAccount:
        if self._account is None:
            self._account = ServiceAccount.for_server("postgres")
        return self._account

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgresql.log"

    @property
    def admin_url(self) -> str:
        """The maintenance database, for CREATE DATABASE and DROP DATABASE."""
        return self.url("postgres")

    def url(self, dbname: str | None = None) -> str:
        """A libpq URL for `dbname` (default: the cluster's own database) as the superuser."""
        name = dbname if dbname is not None else self.database
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(name, safe='')}"
        )

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        pid = read_pid(self.data_dir / "postmaster.pid")
        if pid is None or not process_is_alive(pid, str(self.data_dir)):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def init(self) -> None:
        """Create the cluster with its superuser (initdb); nothing if it exists."""
        if self.is_initialised():
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.account.give(self.directory)
        password_file = self.directory / ".initdb-password"
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(self.password + "\n")
        self.account.give(password_file)
        argv: list[str | Path] = [
            self.programs.initdb,
            "--pgdata",
            self.data_dir,
            "--username",
            self.user,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        ]
        if not self.fsync:
            argv.append("--no-sync")
        try:
            result = run_program(self.account.command(argv), what="initdb")
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise StackError(
                f"initdb failed in {self.data_dir}: {last[-1] if last else 'no message'}"
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# added by ehealthlab\ninclude_if_exists = '{SETTINGS_FILE}'\n")

    def _settings(self) -> dict[str, str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": "",
            "password_encryption": "scram-sha-256",
        }
        if self.preload_libraries:
            settings["shared_preload_libraries"] = ",".join(self.preload_libraries)
        if "timescaledb" in self.preload_libraries:
            # patients' data: the extension must not report home
            settings["timescaledb.telemetry_level"] = "off"
        if not self.fsync:
            settings.update(NOT_DURABLE)
        settings.update(self.parameters)
        return settings

    def _write_settings(self) -> None:
        path = self.data_dir / SETTINGS_FILE
        lines = ["# written by ehealthlab at every start: edit the stack, not this file"]
        for name, value in self._settings().items():
            escaped = value.replace("'", "''")
            if "\n" in value:
                raise StackError(f"PostgreSQL setting {name} may not contain a newline")
            lines.append(f"{name} = '{escaped}'")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write("\n".join(lines) + "\n")
        self.account.give(path)

    def start(self) -> None:
        """Initialise if needed, start, wait until it accepts connections, create the database.

        Nothing happens when it already runs. PortTakenError when the port is not free.
        """
        if self.is_running():
            return
        for library in self.preload_libraries:
            self.programs.require_library(library)
        self.init()
        self._write_settings()
        offset = log_size(self.log_file)
        argv: list[str | Path] = [
            self.programs.pg_ctl,
            "--pgdata",
            self.data_dir,
            "--log",
            self.log_file,
            "--wait",
            "--timeout=60",
            "start",
        ]
        result = run_program(self.account.command(argv), what="pg_ctl start")
        if result.returncode != 0:
            tail = log_tail(self.log_file, offset)
            if "Address already in use" in log_since(self.log_file, offset):
                raise PortTakenError(f"PostgreSQL could not bind port {self.port}: {tail}")
            raise StackError(f"PostgreSQL did not start ({self.log_file}): {tail}")
        try:
            self.create_database(self.database)
        except StackError:
            self.stop()  # started means usable: leave nothing half-done running
            raise

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            message = str(exc).strip().splitlines()
            raise StackError(
                f"PostgreSQL on port {self.port} refused to create database {name}: "
                f"{message[-1] if message else type(exc).__name__}"
            ) from None

    def stop(self) -> None:
        """Stop in fast mode (sessions are cut, nothing committed is lost); nothing if stopped."""
        if not self.is_running():
            return
        argv: list[str | Path] = [
            self.programs.pg_ctl,
            "--pgdata",
            self.data_dir,
            "--mode=fast",
            "--wait",
            "stop",
        ]
        result = run_program(self.account.command(argv), what="pg_ctl stop")
        if result.returncode != 0 and self.is_running():
            raise StackError(f"PostgreSQL did not stop: {result.stderr.strip() or 'no message'}")

    def remove(self) -> None:
        """Stop and delete the cluster's directory with all its data."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
