"""bench/fhir_api.py's load: wrk with its Lua script over loopback, and CPU read from
/proc for the API worker, wrk and the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fhir_api_worker import Worker

# -- load ----------------------------------------------------------------------------------------

#: wrk's script: the paths in turn (each thread from its own place), one token, and the
#: figures printed as one JSON line at the end
_LUA = """
local paths = {%(paths)s}
local token = "%(token)s"
local threads = {}
setup = function(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
init = function(args)
  position = id * 7919
end
request = function()
  position = position + 1
  return wrk.format("GET", paths[(position %% #paths) + 1],
                    {["Authorization"] = "Bearer " .. token})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests": %%d, "duration_us": %%d, "socket_errors": %%d, "bad_status": %%d,'
    .. ' "p50": %%d, "p95": %%d, "p99": %%d, "max": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(values), values[3] + values[4]  # all, idle + iowait


def machine_busy(seconds: float = 3.0) -> float:
    """% of all cores busy meanwhile (others' work: the machine is shared)."""
    before = _machine_ticks()
    time.sleep(seconds)
    after = _machine_ticks()
    total, idle = after[0] - before[0], after[1] - before[1]
    return 100 * (total - idle) / total if total else 0.0


@dataclass
class Result:
    label: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    worker_cpu: float  # % of one core
    client_cpu: float  # % of one core
    machine_busy: float  # % of all cores
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(
    worker: Worker,
    paths: Sequence[str],
    token: str,
    *,
    connections: int,
    seconds: float,
    label: str,
    profile: Path | None = None,
) -> Result:
    """`paths` requested in turn by wrk (one thread) on `connections` connections."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA % {"paths": ", ".join(json.dumps(p) for p in paths), "token": token})
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        "--timeout",
        "10s",
        "-s",
        script.name,
        worker.url,
    ]
    clock = os.sysconf("SC_CLK_TCK")
    pid = worker.process.pid
    worker_before, machine_before = _cpu_ticks(pid), _machine_ticks()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    spy = None
    if profile is not None:
        name = "".join(c if c.isalnum() else "_" for c in label)
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, int(seconds) - 2)),
                "-r",
                "200",
                "--gil",
                "-f",
                "raw",
                "-o",
                str(profile / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    client_ticks = 0
    while process.poll() is None:  # wrk's own CPU, read while it still exists
        try:
            client_ticks = _cpu_ticks(process.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    out, _ = process.communicate()
    if spy is not None:
        spy.wait()
    worker_after, machine_after = _cpu_ticks(pid), _machine_ticks()
    Path(script.name).unlink()
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    summary = json.loads(line.removeprefix("RESULT "))
    elapsed = summary["duration_us"] / 1e6
    total = machine_after[0] - machine_before[0]
    idle = machine_after[1] - machine_before[1]
    result = Result(
        label,
        connections,
        summary["requests"],
        elapsed,
        summary["p50"] / 1000,
        summary["p95"] / 1000,
        summary["p99"] / 1000,
        100 * (worker_after - worker_before) / clock / elapsed,
        100 * client_ticks / clock / elapsed,
        100 * (total - idle) / total if total else 0.0,
    )
    if summary["socket_errors"] or summary["bad_status"]:
        result.notes.append(
            f"{summary['socket_errors']} socket errors, {summary['bad_status']} not 2xx"
        )
    return result
