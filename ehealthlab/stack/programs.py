"""Where the servers' programs are, whom they run as, and whether they still run.

The stack uses the distribution's packages, never a private build: PostgreSQL from Debian's
`/usr/lib/postgresql/<version>/bin` (the newest one), Mosquitto from `/usr/sbin`. Both refuse
to run as root (PostgreSQL outright, Mosquitto by dropping to its own user), so when we are
root they run as their system users and their directories must be theirs and reachable.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ehealthlab.errors import MissingDependencyError, StackError

POSTGRES_INSTALL = "apt-get install -y postgresql"
MOSQUITTO_INSTALL = "apt-get install -y mosquitto mosquitto-clients"
#: what to install for an extension, by name; others get a generic hint
EXTENSION_INSTALL = {
    "timescaledb": "apt-get install -y timescaledb-2-postgresql-{version} "
    "(from TimescaleDB's apt repository)",
}
#: where a server's directory goes when its user cannot reach the one asked for
FALLBACK_ROOT = Path("/var/tmp")  # noqa: S108 - made with mkdir, owner checked with lstat


@dataclass(frozen=True, slots=True)
class PostgresPrograms:
    """One PostgreSQL installation: its server programs and where its extensions live."""

    version: str
    bin_dir: Path
    share_dir: Path
    pkglib_dir: Path

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"

    @property
    def pg_ctl(self) -> Path:
        return self.bin_dir / "pg_ctl"

    @property
    def postgres(self) -> Path:
        return self.bin_dir / "postgres"

    def require_extension(self, name: str) -> None:
        """Fail in one line, saying what to install, unless `CREATE EXTENSION name` can work."""
        control = self.share_dir / "extension" / f"{name}.control"
        if not control.is_file():
            hint = EXTENSION_INSTALL.get(name, "the package providing it").format(
                version=self.version
            )
            raise MissingDependencyError(
                f"PostgreSQL {self.version} has no {name} extension (no {control}): "
                f"install it with  {hint}"
            )

    def require_library(self, name: str) -> None:
        """Fail in one line unless `name` can be put in shared_preload_libraries."""
        library = self.pkglib_dir / f"{name}.so"
        if not library.is_file():
            hint = EXTENSION_INSTALL.get(name, "the package providing it").format(
                version=self.version
            )
            raise MissingDependencyError(
                f"PostgreSQL {self.version} has no {name} library (no {library}): "
                f"install it with  {hint}"
            )


@dataclass(frozen=True, slots=True)
class MosquittoPrograms:
    """The broker, its control client and the dynamic security plugin."""

    mosquitto: Path
    mosquitto_ctrl: Path
    dynsec_plugin: Path


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in path.name.split("."))


def find_postgres(
    lib_root: Path = Path("/usr/lib/postgresql"), search_path: str | None = None
) -> PostgresPrograms:
    """The newest Debian-layout PostgreSQL, else one on PATH (`search_path` overrides PATH)."""
    candidates = sorted(
        (d for d in lib_root.glob("*") if (d / "bin" / "initdb").is_file()),
        key=_version_key,
        reverse=True,
    )
    if candidates:
        bin_dir = candidates[0] / "bin"
    else:
        found = shutil.which("pg_ctl", path=search_path)
        if found is None or not (Path(found).parent / "initdb").is_file():
            raise MissingDependencyError(
                f"PostgreSQL server not found (no {lib_root}/*/bin/initdb): "
                f"install it with  {POSTGRES_INSTALL}"
            )
        bin_dir = Path(found).resolve().parent
    for name in ("initdb", "pg_ctl", "postgres"):
        if not (bin_dir / name).is_file():
            raise MissingDependencyError(
                f"PostgreSQL server incomplete (no {bin_dir / name}): "
                f"install it with  {POSTGRES_INSTALL}"
            )
    return _describe_postgres(bin_dir)


def _describe_postgres(bin_dir: Path) -> PostgresPrograms:
    """Ask pg_config where extensions live; Debian's own layout when it is not there."""
    version = bin_dir.parent.name
    share_dir = Path("/usr/share/postgresql") / version
    pkglib_dir = bin_dir.parent / "lib"
    pg_config = bin_dir / "pg_config"
    if pg_config.is_file():
        result = subprocess.run(
            [str(pg_config), "--sharedir", "--pkglibdir", "--version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        lines = result.stdout.splitlines()
        if result.returncode == 0 and len(lines) == 3:
            share_dir, pkglib_dir = Path(lines[0]), Path(lines[1])
            # "PostgreSQL 15.8 (Debian 15.8-0+deb12u1)" -> "15"
            words = lines[2].split()
            if len(words) > 1:
                version = words[1].split(".")[0]
    return PostgresPrograms(
        version=version, bin_dir=bin_dir, share_dir=share_dir, pkglib_dir=pkglib_dir
    )


def find_mosquitto(
    lib_dirs: Sequence[Path] = (Path("/usr/lib"), Path("/usr/local/lib")),
    search_path: str | None = None,
) -> MosquittoPrograms:
    """Mosquitto, mosquitto_ctrl and the dynamic security plugin of the multiarch lib dirs."""
    if search_path is None:
        # /usr/sbin is often not on a normal user's PATH
        search_path = f"{os.environ.get('PATH', os.defpath)}:/usr/sbin:/usr/local/sbin"
    mosquitto = shutil.which("mosquitto", path=search_path)
    ctrl = shutil.which("mosquitto_ctrl", path=search_path)
    plugins = [
        found
        for lib_dir in lib_dirs
        for pattern in ("*/mosquitto_dynamic_security.so", "mosquitto_dynamic_security.so")
        for found in sorted(lib_dir.glob(pattern))
    ]
    if mosquitto is None or ctrl is None or not plugins:
        missing = [
            name
            for name, absent in (
                ("mosquitto", mosquitto is None),
                ("mosquitto_ctrl", ctrl is None),
                ("mosquitto_dynamic_security.so", not plugins),
            )
            if absent
        ]
        raise MissingDependencyError(
            f"Mosquitto not found (no {', '.join(missing)}): install it with  {MOSQUITTO_INSTALL}"
        )
    return MosquittoPrograms(
        mosquitto=Path(mosquitto), mosquitto_ctrl=Path(ctrl), dynsec_plugin=plugins[0]
    )


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """Who a server runs as: its system user when we are root, else ourselves.

    `name` is None when the server runs as the current user (no `runuser`, no `chown`).
    """

    name: str | None
    uid: int
    gid: int

    @classmethod
    def for_server(cls, system_user: str) -> ServiceAccount:
        if os.geteuid() != 0:
            return cls(name=None, uid=os.geteuid(), gid=os.getegid())
        try:
            entry = pwd.getpwnam(system_user)
        except KeyError:
            raise StackError(
                f"no `{system_user}` system user to run the server as (we are root and it "
                "refuses root); reinstall its Debian package or run as a normal user"
            ) from None
        return cls(name=system_user, uid=entry.pw_uid, gid=entry.pw_gid)

    def command(self, argv: Sequence[str | Path]) -> list[str]:
        """`argv` run as this account."""
        args = [str(arg) for arg in argv]
        return ["runuser", "-u", self.name, "--", *args] if self.name else args

    def give(self, path: Path) -> None:
        """Make `path` the account's (only needed, and only done, when we are root)."""
        if self.name is not None:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def can_reach(self, directory: Path) -> bool:
        """True when the account can traverse every directory down to and into `directory`."""
        if self.name is None:
            return os.access(directory, os.X_OK)
        result = subprocess.run(
            self.command(["test", "-x", directory]), capture_output=True, check=False, timeout=30
        )
        return result.returncode == 0


def place_for(account: ServiceAccount, wanted: Path, key: str = "") -> Path:
    """Create and return the directory a server keeps its files in: `wanted` if possible.

    As root, `wanted` may sit under a directory the server's user cannot traverse (pytest's
    0700 /tmp/pytest-of-root, a repository cloned by `mktemp -d`). The directory then goes to
    /var/tmp, named after a hash of `wanted` and `key` (so the same wish finds it again), and
    the caller records where it went.
    """
    wanted = wanted.absolute()
    wanted.parent.mkdir(parents=True, exist_ok=True)
    if account.name is None or account.can_reach(wanted.parent):
        _make_private_dir(wanted, account)
        return wanted
    digest = hashlib.sha256(f"{wanted}\0{key}".encode()).hexdigest()[:16]
    fallback = FALLBACK_ROOT / f"ehealthlab-{account.name}-{digest}"
    _make_private_dir(fallback, account)
    return fallback


def _make_private_dir(path: Path, account: ServiceAccount) -> None:
    """A 0700 directory of the account's; refuse one someone else planted (it is /var/tmp)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (account.uid, os.geteuid()):
            raise StackError(
                f"{path} exists but is not a directory of ours; remove it and retry"
            ) from None
        if info.st_uid == account.uid:
            return
    account.give(path)
    path.chmod(0o700)


def process_is_alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and its command line contains `marker` (our config or data dir).

    A pid file can outlive its process (a crash, a reboot) and the pid be reused; zombies are
    dead too (the container's init may not reap them).
    """
    proc = Path("/proc") / str(pid)
    try:
        status = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = status.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def read_pid(pid_file: Path) -> int | None:
    """The first line of a pid file as a number, None when absent or garbled."""
    try:
        first = pid_file.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def run_program(
    argv: Sequence[str], *, what: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a server program to completion; OSError and timeouts become StackError."""
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"{what} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise StackError(f"{what} could not run: {exc.strerror or exc}") from None


def log_since(log_file: Path, offset: int = 0) -> str:
    """What a server logged since `offset` (empty when there is no log)."""
    try:
        with log_file.open("rb") as stream:
            stream.seek(offset)
            return stream.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def log_tail(log_file: Path, offset: int = 0, lines: int = 4) -> str:
    """The last lines a server logged since `offset`, on one line (for one-line errors)."""
    text = log_since(log_file, offset)
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else f"nothing logged in {log_file}"


def log_size(log_file: Path) -> int:
    """Where the next start's lines will begin in `log_file`."""
    try:
        return log_file.stat().st_size
    except FileNotFoundError:
        return 0
