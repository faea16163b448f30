"""bench/ingest.py's measures against the bare broker and under a user's load.

Two questions the paced scenarios of bench/ingest.py leave open (issue 13, ingest 4):

1. **How close does ingest come to MQTT itself?** The same paced publishers, on the same
   broker, offered the same load above capacity, consumed by two `mosquitto_sub` processes
   (QoS 1, client ids partitioned like ingest's two workers, so the broker does the same
   work) instead of ingest: messages/s delivered in the window is the ceiling of broker and
   publishers on this machine. Ingest's committed single-reading messages/s is given as a
   ratio of it (goal >= 0.7).
2. **What does a user's load get?** Not a token bucket: 20 devices, each a
   `mosquitto_pub -V 5 -q 1 -l` process (Mosquitto's own client, its defaults) fed all its
   messages on stdin at once, so ramp-up and the tail count. Counted from the first message
   the broker received (its receive stamp) to the last commit (ingest) or to the last
   delivery (bare `mosquitto_sub`, the same load in the same run).

Both run inside bench/ingest.py (`main` calls `run_load`), on its servers and pilot.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from ingest_messages import COMMITTED, NOT_PROBE, encode_message, one, reading_items
from ingest_processes import CpuMeter

from ehealthlab.contract.topics import READINGS_WILDCARD, readings_topic

if TYPE_CHECKING:  # the bench script's run, which imports this module
    from ingest_run import Run
    from ingest_scenarios import Outcome

#: devices of the user's load (one mosquitto_pub each), as in the issue's own trial
LOAD_DEVICES = 20
#: partitions of the bare consumers: ingest runs two workers
PARTITIONS = 2


@dataclass
class LoadOutcome:
    """One user's-load measurement: messages and readings over first-publish..last-done."""

    title: str
    consumer: str  # "ingest", "floor" or "bare"
    per_message: int
    messages: int
    done: int = 0
    seconds: float = 0.0

    @property
    def msgs_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def readings_s(self) -> float:
        return self.msgs_s * self.per_message


# -- bare MQTT with the bench's paced publishers ---------------------------------------------


def bare_subscribers(
    run: Run, out: Path, count_only: bool = False, client: str = "mosquitto_sub"
) -> list[subprocess.Popen[Any]]:
    """Two subscribers as ingest's two workers (partitioned client ids, QoS 1, durable
    sessions are not needed: they subscribe before anything is published), each printing the
    delivery time of every message, one line each: `mosquitto_sub` (bare MQTT), or with
    `client="paho"` bench/ingest_paho.py (the platform's own MQTT client, nothing else)."""
    admin = run.stack.admin
    processes = []
    for k in range(1, PARTITIONS + 1):
        client_id = f"bench-{client}-{k}.p{k}of{PARTITIONS}"
        if client == "paho":
            script = str(Path(__file__).with_name("ingest_paho.py"))
            argv = [sys.executable, script, admin.host, str(admin.port),
                    admin.username or "", admin.password or "", client_id]  # fmt: skip
        else:
            argv = [
                _program("mosquitto_sub"), "-h", admin.host, "-p", str(admin.port), "-V", "5",
                "-q", "1", "-i", client_id, "-u", admin.username or "",
                "-P", admin.password or "", "-t", READINGS_WILDCARD, "-F", "%U",
            ]  # fmt: skip
        stream = (out / f"bare-{k}.txt").open("wb")
        processes.append(subprocess.Popen(argv, stdout=stream, stderr=subprocess.DEVNULL))
        stream.close()
        run.children.append(processes[-1])
    time.sleep(1.0)  # SUBACK: mosquitto_sub says nothing when it is subscribed
    return processes


def stop_subscribers(run: Run, processes: list[subprocess.Popen[Any]]) -> None:
    for process in processes:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait()
        run.children.remove(process)


def delivery_times(out: Path) -> list[float]:
    times: list[float] = []
    for path in sorted(out.glob("bare-*.txt")):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                times.append(float(line))
    return times


def run_bare(run: Run, outcome: Outcome, client: str = "mosquitto_sub") -> Outcome:
    """The paced publishers of the outcome's scenario into bare subscribers (`client`):
    delivered messages/s in the measurement window."""
    scenario = outcome.scenario
    out = Path(tempfile.mkdtemp(prefix="ehl-bench-bare-"))
    try:
        subscribers = bare_subscribers(run, out, client=client)
        try:
            processes, results, (_, t_measure, t_end) = run.publishers(scenario)
            time.sleep(max(0.0, t_measure - time.time()))
            meter = CpuMeter(run.cpu_groups(subscribers=subscribers, publishers=processes))
            time.sleep(max(0.0, t_end - time.time()))
            outcome.cpu, outcome.threads = meter.stop()
            run.collect(processes, results, outcome)
            time.sleep(1.0)  # the last deliveries of the window
        finally:
            stop_subscribers(run, subscribers)
        times = delivery_times(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    in_window = sum(t_measure < t <= t_end for t in times)
    outcome.committed_msgs_s = in_window / (t_end - t_measure)
    outcome.committed_readings_s = outcome.committed_msgs_s * scenario.per_message
    outcome.backlog_msgs = outcome.sent - sum(t <= t_end for t in times)
    return outcome


# -- a user's load: mosquitto_pub -l, one process per device ---------------------------------


def load_files(run: Run, out: Path, per_message: int, messages: int) -> list[Path]:
    """Each device's messages, one per line, as its mosquitto_pub reads them."""
    files = []
    for device in run.stack.devices[:LOAD_DEVICES]:
        path = out / f"{device.device_id}.lines"
        with path.open("wb") as stream:
            for m in range(messages):
                items = reading_items(m * per_message, per_message, device.index,
                                      run.stack.base_epoch)  # fmt: skip
                stream.write(encode_message(f"load-{m}", items) + b"\n")
        files.append(path)
    return files


def publish_lines(run: Run, files: list[Path]) -> None:
    """One `mosquitto_pub -V 5 -q 1 -l` per device, all at once; returns when all exited."""
    admin = run.stack.admin
    devices = run.stack.devices[:LOAD_DEVICES]
    processes = []
    for device, path in zip(devices, files, strict=True):
        argv = [
            _program("mosquitto_pub"), "-h", admin.host, "-p", str(admin.port), "-V", "5",
            "-q", "1", "-i", device.device_id, "-u", device.device_id, "-P", device.password,
            "-t", readings_topic(device.device_id), "-l",
        ]  # fmt: skip
        with path.open("rb") as stream:
            processes.append(subprocess.Popen(argv, stdin=stream, stderr=subprocess.PIPE))
    for process in processes:
        _, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"mosquitto_pub failed: {err.decode(errors='replace')[-300:]}")


def load_into_bare(run: Run, per_message: int, messages: int) -> LoadOutcome:
    outcome = LoadOutcome(f"bare MQTT, {per_message} rd/msg", "bare", per_message,
                          messages * LOAD_DEVICES)  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="ehl-bench-load-"))
    try:
        files = load_files(run, out, per_message, messages)
        subscribers = bare_subscribers(run, out)
        try:
            publish_lines(run, files)
            deadline = time.monotonic() + 120
            while len(delivery_times(out)) < outcome.messages and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop_subscribers(run, subscribers)
        times = delivery_times(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    outcome.done = len(times)
    outcome.seconds = max(times) - min(times) if times else 0.0
    return outcome


def load_into_ingest(run: Run, per_message: int, messages: int) -> LoadOutcome:
    title = f"ingest --workers {run.options.workers}, {per_message} rd/msg"
    outcome = LoadOutcome(title, "ingest", per_message, messages * LOAD_DEVICES)
    database = f"bench_load_{per_message}"
    url = run.stack.fresh_database(database)
    out = Path(tempfile.mkdtemp(prefix="ehl-bench-load-"))
    try:
        files = load_files(run, out, per_message, messages)
        ingest, log, names = run.start_ingest(url)
        try:
            publish_lines(run, files)
            stored, seconds = _stored_span(url, "device_messages", outcome.messages)
        finally:
            run.stop_ingest(ingest, names)
            log.close()
    finally:
        shutil.rmtree(out, ignore_errors=True)
        run.stack.drop_database(database)
    outcome.done, outcome.seconds = stored, seconds
    return outcome


def _stored_span(url: str, table: str, wanted: int) -> tuple[int, float]:
    """Wait (up to 300 s) for `wanted` rows of the load in `table`; then how many there are and
    the seconds from the broker's first receipt of one to the last commit of one."""
    with psycopg.connect(url, autocommit=True) as conn:
        query = f"SELECT count(*) FROM {table} WHERE {NOT_PROBE}"  # noqa: S608
        deadline = time.monotonic() + 300
        while one(conn, query) < wanted and time.monotonic() < deadline:
            time.sleep(0.2)
        row = conn.execute(
            f"SELECT count(*), extract(epoch FROM min(received_at)), max({COMMITTED})"  # noqa: S608
            f" FROM {table} WHERE {NOT_PROBE}"
        ).fetchone()
    assert row is not None
    seconds = float(row[2]) - float(row[1]) if row[1] is not None and row[2] is not None else 0.0
    return int(row[0]), seconds


def load_into_floor(run: Run, per_message: int, messages: int) -> LoadOutcome:
    """The same load into the floor (bench/ingest_floor.py: the least an ingest must do),
    counted over its readings, which keep their message's receive stamp."""
    outcome = LoadOutcome(f"floor, {per_message} rd/msg", "floor", per_message,
                          messages * LOAD_DEVICES)  # fmt: skip
    database = f"bench_load_floor_{per_message}"
    url = run.stack.fresh_database(database)
    out = Path(tempfile.mkdtemp(prefix="ehl-bench-load-"))
    try:
        files = load_files(run, out, per_message, messages)
        floors, names = run.start_floor(url)
        try:
            publish_lines(run, files)
            stored, seconds = _stored_span(url, "readings", outcome.messages * per_message)
        finally:
            run.stop_floor(floors, names)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        run.stack.drop_database(database)
    outcome.done, outcome.seconds = stored // per_message, seconds
    return outcome


_MEASURES = {"bare subscribers": load_into_bare, "ingest": load_into_ingest,
             "the floor": load_into_floor}  # fmt: skip


def run_load(run: Run, quick: bool) -> list[LoadOutcome]:
    """The user's load, one reading per message and 50, into bare subscribers, ingest and
    the floor."""
    sizes = ((1, 2_000 if quick else 5_000), (50, 200 if quick else 500))
    outcomes = []
    for per_message, messages in sizes:
        for name, measure in _MEASURES.items():
            print(f"- user's load ({LOAD_DEVICES} mosquitto_pub -l, {per_message} rd/msg) into "
                  f"{name} ...", flush=True)  # fmt: skip
            outcomes.append(measure(run, per_message, messages))
            print(f"  {outcomes[-1].msgs_s:,.0f} msg/s", flush=True)
    return outcomes


def report_load(outcomes: list[LoadOutcome]) -> list[str]:
    header = f"{'user load':<32} {'messages':>10} {'seconds':>8} {'msg/s':>9} {'readings/s':>11}"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        done = f"{o.done:,}" if o.done == o.messages else f"{o.done:,}/{o.messages:,} ONLY"
        lines.append(f"{o.title:<32} {done:>10} {o.seconds:>8.1f} {o.msgs_s:>9,.0f}"
                     f" {o.readings_s:>11,.0f}")  # fmt: skip
    for per_message in sorted({o.per_message for o in outcomes}):
        bare = next((o for o in outcomes if o.consumer == "bare" and o.per_message == per_message),
                    None)  # fmt: skip
        ingest = next(
            (o for o in outcomes if o.consumer == "ingest" and o.per_message == per_message), None
        )
        if bare is not None and ingest is not None and bare.msgs_s > 0:
            ratio = ingest.msgs_s / bare.msgs_s
            goal = (f"goal >= 0.7: {'met' if ratio >= 0.7 else 'NOT met'}" if per_message == 1
                    else f"goal >= 50,000 rd/s: "
                         f"{'met' if ingest.readings_s >= 50_000 else 'NOT met'}")  # fmt: skip
            lines.append(f"user load, {per_message} rd/msg: ingest / bare MQTT = {ratio:.2f}x"
                         f"   ({goal})")  # fmt: skip
        floor = next(
            (o for o in outcomes if o.consumer == "floor" and o.per_message == per_message), None
        )
        if bare is not None and floor is not None and bare.msgs_s > 0:
            lines.append(f"user load, {per_message} rd/msg: floor / bare MQTT ="
                         f" {floor.msgs_s / bare.msgs_s:.2f}x")  # fmt: skip
    return lines


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: apt-get install -y mosquitto-clients")
    return found
