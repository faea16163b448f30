"""The processes of a bench/ingest.py run: CPU read from /proc for groups of processes
(and by thread), and helpers to wait for, stop and read the children it starts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- CPU accounting ---------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of a process, None when it is gone."""
    return _proc_stat_of(Path(f"/proc/{pid}/stat"))


def _proc_stat_of(path: Path) -> tuple[int, int] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) a live process has used so far."""
    stat = _proc_stat(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    return stat[1] / CLOCK_TICKS


def descendants(roots: Sequence[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: set[int] = set()
    todo = [r for r in roots if r]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


class CpuMeter:
    """CPU seconds of groups of processes (and their descendants) between start and stop.

    A group named in `by_thread` is also split into its processes' main threads and their
    other threads (in an ingest worker: the batch loop, and paho's network thread)."""

    def __init__(self, groups: dict[str, Sequence[int]], by_thread: Sequence[str] = ()) -> None:
        self.groups = {name: descendants(pids) for name, pids in groups.items()}
        self.by_thread = [name for name in by_thread if name in self.groups]
        self.start_ticks = self._ticks()
        self.start_machine = self._machine()
        self.started = time.monotonic()

    def _ticks(self) -> dict[str, int]:
        ticks = {
            name: sum(s[1] for p in pids if (s := _proc_stat(p)) is not None)
            for name, pids in self.groups.items()
        }
        for name in self.by_thread:
            main = other = 0
            for pid in self.groups[name]:
                with contextlib.suppress(OSError):
                    for task in Path(f"/proc/{pid}/task").iterdir():
                        stat = _proc_stat_of(task / "stat")
                        if stat is None:
                            continue
                        if int(task.name) == pid:
                            main += stat[1]
                        else:
                            other += stat[1]
            ticks[f"{name} main threads"] = main
            ticks[f"{name} other threads"] = other
        return ticks

    @staticmethod
    def _machine() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        """(% of a core per group, with `others` and `machine`; % per thread kind)."""
        elapsed = time.monotonic() - self.started
        ticks = self._ticks()
        percent = {
            name: 100 * (ticks[name] - self.start_ticks[name]) / CLOCK_TICKS / elapsed
            for name in ticks
        }
        shares = {name: percent[name] for name in self.groups}
        threads = {name: v for name, v in percent.items() if name not in self.groups}
        busy, total = self._machine()
        cores = os.cpu_count() or 1
        machine = (
            100 * cores * (busy - self.start_machine[0]) / max(1, total - self.start_machine[1])
        )
        # whatever else was busy (kernel threads, other users of the machine) took CPU too
        shares["others"] = max(0.0, machine - sum(shares.values()))
        shares["machine"] = machine
        return shares, threads


# -- helpers ----------------------------------------------------------------------------------


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def drain_queue(q: Any) -> list[Any]:
    found = []
    with contextlib.suppress(Exception):
        while True:
            found.append(q.get_nowait())
    return found


def stop_child(child: Any, timeout: float = 10.0) -> None:
    """Stop one process we started (SIGTERM, then SIGKILL), by its own handle."""
    if isinstance(child, subprocess.Popen):
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in sorted(descendants([child.pid]) - {child.pid}):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                child.kill()
                child.wait(10)
        return
    if child.is_alive():
        child.terminate()
        child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join(5)


def tail(log: Any, size: int = 3000) -> str:
    log.seek(0)
    return str(log.read().decode(errors="replace")[-size:])
