"""The stack's background services: the API (with the portal) and an ingest worker, started
as processes of their own that outlive the command that started them (`ehealthlab demo`,
`ehealthlab stack up --services`) and stop with `ehealthlab stack down`.

Each is recorded in the stack's state file: its pid, the kernel's start time of that pid (so
a pid the kernel has since given to another process is never signalled), its command line,
its log file and its address. Each runs in a session of its own (no terminal's hang-up
reaches it); stopping sends SIGTERM to its process group, waits for it to end (ingest stores
and acknowledges what it holds first), and sends SIGKILL only past a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel

from ehealthlab.errors import StackError

#: the order they start in; they stop in the reverse order (the API first, ingest last, so
#: ingest still stores what devices sent while the API went away)
SERVICES = ("ingest", "api")
#: ingest's client id on the broker; not `ingest-1`, which `ehealthlab ingest` run by hand
#: takes (two clients with one id would take the session from each other in turn)
INGEST_NAME = "ingest-local-1"

#: processes that are still our children (started by this process): kept so they can be
#: reaped when they stop (no zombie, no "still running" warning when the object goes away)
_children: dict[int, subprocess.Popen[bytes]] = {}


class BackgroundState(BaseModel):
    """What the state file records about one background service."""

    pid: int
    #: the pid's start time in clock ticks after boot (/proc/PID/stat, field 22)
    started: int
    argv: list[str]
    log: Path
    #: where it answers, e.g. http://127.0.0.1:8000 (None: it serves nobody)
    address: str | None = None


def start_ticks(pid: int) -> int | None:
    """The start time of a live (not zombie) process `pid`; None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and ')'
    if fields[0] in ("Z", "X"):  # ended, not yet reaped
        return None
    return int(fields[19])


def is_running(recorded: BackgroundState) -> bool:
    """The recorded process still runs (the same process, not a later one with its pid)."""
    return start_ticks(recorded.pid) == recorded.started


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    address: str | None,
    pass_fds: Sequence[int] = (),
) -> BackgroundState:
    """Start `argv` in a session of its own, its output appended to `log`, with the file
    descriptors `pass_fds` open in it (a listening socket)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    _children[child.pid] = child
    ticks = start_ticks(child.pid)
    if ticks is None:  # it ended at once: say why
        child.wait()
        _children.pop(child.pid, None)
        raise StackError(f"{argv[-1]} ended at once: {_tail(log)}")
    return BackgroundState(pid=child.pid, started=ticks, argv=list(argv), log=log, address=address)


def stop(recorded: BackgroundState, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM its process group, wait, SIGKILL past `timeout_s`; False if it was not running."""
    if not is_running(recorded):
        _reap(recorded.pid)
        return False
    _signal_group(recorded, signal.SIGTERM)
    if not _wait_gone(recorded, timeout_s):
        _signal_group(recorded, signal.SIGKILL)
        if not _wait_gone(recorded, 10.0):
            raise StackError(f"process {recorded.pid} ({recorded.argv[-1]}) would not stop")
    return True


def _signal_group(recorded: BackgroundState, signum: signal.Signals) -> None:
    try:
        if os.getpgid(recorded.pid) == recorded.pid:  # still the leader of its own group
            os.killpg(recorded.pid, signum)
        else:
            os.kill(recorded.pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(recorded: BackgroundState, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(recorded.pid)
        if not is_running(recorded):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def wait_ready(
    name: str,
    recorded: BackgroundState,
    ready: Callable[[], bool],
    *,
    timeout_s: float = 120.0,
) -> None:
    """Until `ready()`; StackError with the log's last lines if it ends or the time runs out
    (a loaded machine only makes it slower: the API's imports alone took 5-17 s with three
    busy processes on two cores)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not is_running(recorded):
            raise StackError(f"the {name} service ended while starting: {_tail(recorded.log)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"the {name} service was not ready after {timeout_s:.0f} s: {_tail(recorded.log)}"
            )
        time.sleep(0.1)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {log})"
    return " | ".join(text[-lines:]) or f"(nothing in {log})"


def answers(url: str) -> bool:
    """An HTTP GET of `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own http URL
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def api_argv(fd: int) -> list[str]:
    """The API serving on the listening socket `fd`, bound by the stack (see `spawn`)."""
    return [sys.executable, "-m", "ehealthlab.cli", "api", "--fd", str(fd)]


def ingest_argv(ready_file: Path) -> list[str]:
    return [sys.executable, "-m", "ehealthlab.stack.serve_ingest", "--name", INGEST_NAME,
            "--ready-file", str(ready_file)]  # fmt: skip
