"""One bench/ingest.py run: its servers and pilot, and each scenario (publishers, then
ingest or the naive bridge; the figures from the store; py-spy when asked)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ingest_load
import orjson
import psycopg
from ingest_messages import COMMITTED, NOT_PROBE, PROBE, one, reading_items
from ingest_naive import run_naive_bridge
from ingest_processes import CpuMeter, drain_queue, sleep_until, stop_child, tail
from ingest_profile import summarise_profile
from ingest_publishers import PublisherPlan, run_publisher
from ingest_scenarios import Options, Outcome, Scenario
from ingest_stack import Stack

from ehealthlab.contract.topics import readings_topic
from ehealthlab.mqtt import MqttConnection
from ehealthlab.stack.programs import log_since, log_size

PY_SPY = Path(sys.executable).parent / "py-spy"


# -- one scenario -----------------------------------------------------------------------------


class Run:
    """Servers, pilot and the scenarios of one bench run; `close` leaves nothing behind."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stack = Stack(options)
        self.context = multiprocessing.get_context("spawn")
        self.children: list[Any] = []  # processes of ours still to stop
        self.next_worker = 1

    def close(self) -> None:
        for child in self.children:
            stop_child(child)
        self.children.clear()
        self.stack.close()

    # scenario plumbing

    def publishers(self, scenario: Scenario) -> tuple[list[Any], Any, tuple[float, float, float]]:
        """Start the publishers; once all devices are connected, give them a common start
        time (1 s ahead). Returns processes, their result queue, (start, measure, end)."""
        options = self.options
        ready_events = []
        results = self.context.Queue()
        go = self.context.Event()
        start = self.context.Value("d", 0.0)
        processes = []
        count = min(options.publishers, len(self.stack.devices))
        for p in range(count):
            mine = tuple((d.index, d.device_id, d.password) for d in self.stack.devices[p::count])
            plan = PublisherPlan(
                host=self.stack.broker.host, port=self.stack.broker.port, devices=mine,
                per_message=scenario.per_message, rate=scenario.rate / count,
                warmup=options.warmup, duration=options.duration, window=options.window,
                base_epoch=self.stack.base_epoch, first_reading=0,  # a fresh database
            )  # fmt: skip
            ready = self.context.Event()
            process = self.context.Process(
                target=run_publisher, args=(plan, ready, go, start, results), name=f"publisher-{p}"
            )
            process.start()
            self.children.append(process)
            processes.append(process)
            ready_events.append(ready)
        deadline = time.monotonic() + 60
        for ready, process in zip(ready_events, processes, strict=True):
            while not ready.wait(0.2):
                if not process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{process.name} did not connect its devices: "
                                       f"{drain_queue(results)}")  # fmt: skip
        t_start = time.time() + 1.0
        start.value = t_start
        go.set()
        timing = (t_start, t_start + options.warmup, t_start + options.duration)
        return processes, results, timing

    def collect(self, processes: list[Any], results: Any, outcome: Outcome) -> None:
        reports: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.options.duration + 60
        while len(reports) < len(processes) and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                reports.append(results.get(timeout=1))
        for process in processes:
            process.join(timeout=10)
            stop_child(process)
            self.children.remove(process)
        errors = [r["error"] for r in reports if "error" in r]
        if errors or len(reports) < len(processes):
            raise RuntimeError(f"publishers failed: {errors or 'no report'}")
        outcome.sent = sum(r["acked"] for r in reports)
        outcome.refused = sum(r["refused"] + r["publish_errors"] + r["unacked"] for r in reports)
        window = self.options.duration - self.options.warmup
        outcome.offered_msgs = sum(r["sent_in_window"] for r in reports) / window

    def run(self, scenario: Scenario) -> Outcome:
        if scenario.consumer == "bare":
            return ingest_load.run_bare(self, Outcome(scenario))
        if scenario.consumer == "paho":
            return ingest_load.run_bare(self, Outcome(scenario), client="paho")
        database = f"bench_{scenario.key}"
        url = self.stack.fresh_database(database)
        try:
            if scenario.consumer == "ingest":
                return self.run_ingest(scenario, url)
            if scenario.consumer == "floor":
                return self.run_floor(scenario, url)
            return self.run_naive(scenario, url)
        finally:
            self.stack.drop_database(database)

    # ingest

    def run_ingest(self, scenario: Scenario, url: str) -> Outcome:
        ingest, log, names = self.start_ingest(url)
        outcome = Outcome(scenario)
        try:
            processes, results, (_, t_measure, t_end) = self.publishers(scenario)
            sleep_until(t_measure)
            meter = CpuMeter(
                self.cpu_groups(ingest=[ingest.pid], publishers=processes), by_thread=["ingest"]
            )
            spy = self.start_profile(scenario, ingest.pid, t_end - t_measure)
            sleep_until(t_end)
            outcome.cpu, outcome.threads = meter.stop()
            self.collect(processes, results, outcome)
            self.wait_drained(url, outcome, t_end)
            if spy is not None:
                outcome.profile = self.finish_profile(spy, scenario)
            if ingest.poll() is not None:
                raise RuntimeError(f"ingest exited early:\n{tail(log)}")
        finally:
            self.stop_ingest(ingest, names)
            log.close()
        self.measure(url, outcome, t_measure, t_end, latency=True)
        return outcome

    def start_ingest(self, url: str) -> tuple[subprocess.Popen[bytes], Any, list[str]]:
        """`ehealthlab ingest --workers 2` as deployed (partitioned, the default), under a
        fresh name, so no scenario inherits another's sessions; with its client ids."""
        prefix = f"bench-{self.next_worker}"
        self.next_worker += 1
        n = self.options.workers
        names = [f"{prefix}-{k}.p{k}of{n}" for k in range(1, n + 1)]
        stack = self.stack
        env = {
            **os.environ,
            "EHEALTHLAB_DATABASE_URL": url,
            "EHEALTHLAB_MQTT_HOST": stack.broker.host,
            "EHEALTHLAB_MQTT_PORT": str(stack.broker.port),
            "EHEALTHLAB_MQTT_USERNAME": stack.broker.admin_username,
            "EHEALTHLAB_MQTT_PASSWORD": stack.broker.admin_password,
            "EHEALTHLAB_STATE_DIR": "/nonexistent-ehealthlab-bench-state",
        }
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in run_ingest
        offset = log_size(stack.broker.log_file)
        argv = [sys.executable, "-m", "ehealthlab.cli", "ingest", "--workers", str(n),
                "--name", prefix]  # fmt: skip
        if self.options.batch_wait_ms is not None:
            argv += ["--batch-wait-ms", str(self.options.batch_wait_ms)]
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.children.append(process)
        try:
            self.wait_subscribed(process, log, url, names, offset)
        except BaseException:
            self.stop_ingest(process, names)
            log.close()
            raise
        return process, log, names

    def wait_subscribed(
        self, process: subprocess.Popen[bytes], log: Any, url: str, names: list[str], offset: int
    ) -> None:
        """Both workers connected (the broker's log says so) and a probe message stored: a
        message published before a worker's subscription exists is, by MQTT, for nobody."""
        deadline = time.monotonic() + 60
        log_file = self.stack.broker.log_file
        while not all(f" as {n} " in log_since(log_file, offset) for n in names):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not connect:\n{tail(log)}")
            time.sleep(0.1)
        device = self.stack.devices[0]
        probe_connection = MqttConnection(
            self.stack.admin.as_user(device.device_id, device.password), device.device_id
        )
        with probe_connection, psycopg.connect(url, autocommit=True) as conn:
            for attempt in range(200):
                items = reading_items(0, 1, device.index, self.stack.base_epoch - 86400)
                items[0]["seq"] = attempt
                probe = orjson.dumps({"schema": "ehl.readings/1", "msg_id": f"{PROBE}{attempt}",
                                      "sent_at": datetime.now(UTC).isoformat(),
                                      "readings": items})  # fmt: skip
                probe_connection.publish(readings_topic(device.device_id), probe)
                for _ in range(5):
                    time.sleep(0.1)
                    if one(conn, "SELECT count(*) FROM device_messages") > 0:
                        time.sleep(0.5)  # the second worker's SUBSCRIBE is a moment behind
                        return
                if process.poll() is not None or time.monotonic() > deadline:
                    break
        raise RuntimeError(f"ingest stored no probe message:\n{tail(log)}")

    def stop_ingest(self, process: subprocess.Popen[bytes], names: list[str]) -> None:
        """SIGTERM (workers store what they hold; partitioned, they keep their sessions);
        SIGKILL if stuck; then end the sessions, so they do not collect the next runs'
        messages in the broker."""
        stop_child(process, timeout=30)
        if process in self.children:
            self.children.remove(process)
        self.end_sessions(names)

    def end_sessions(self, names: list[str]) -> None:
        """Connect as each client with a clean start, which ends its session in the broker."""
        for name in names:
            with contextlib.suppress(Exception):
                MqttConnection(self.stack.admin, name, clean_start=True).connect().close()

    def wait_drained(self, url: str, outcome: Outcome, t_end: float) -> None:
        """Give ingest (or the floor) up to `drain` seconds to store what was published."""
        deadline = time.monotonic() + self.options.drain
        table, expected = _message_log(outcome.scenario)
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                query = f"SELECT count(*) FROM {table} WHERE {NOT_PROBE}"  # noqa: S608
                stored = one(conn, query)
                if stored >= outcome.sent * expected:
                    outcome.drained = True
                    return
                time.sleep(0.25)

    # the floor: the least an ingest must do (bench/ingest_floor.py)

    def run_floor(self, scenario: Scenario, url: str) -> Outcome:
        """The floor processes in place of ingest, offered the scenario's load."""
        outcome = Outcome(scenario)
        if scenario.key.startswith("floor-keys"):  # the readings' key and index only
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER TABLE readings DISABLE TRIGGER USER")
        floors, names = self.start_floor(url)
        try:
            processes, results, (_, t_measure, t_end) = self.publishers(scenario)
            sleep_until(t_measure)
            meter = CpuMeter(self.cpu_groups(floor=floors, publishers=processes))
            sleep_until(t_end)
            outcome.cpu, outcome.threads = meter.stop()
            self.collect(processes, results, outcome)
            self.wait_drained(url, outcome, t_end)
            if any(floor.poll() is not None for floor in floors):
                raise RuntimeError("a floor process exited early")
        finally:
            self.stop_floor(floors, names)
        self.measure(url, outcome, t_measure, t_end, latency=True)
        return outcome

    def start_floor(self, url: str) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
        """One floor process per partition, named as ingest's workers, each subscribed."""
        prefix = f"bench-floor-{self.next_worker}"
        self.next_worker += 1
        n, admin = self.options.workers, self.stack.admin
        names = [f"{prefix}-{k}.p{k}of{n}" for k in range(1, n + 1)]
        script = str(Path(__file__).with_name("ingest_floor.py"))
        floors: list[subprocess.Popen[bytes]] = []
        try:
            for name in names:
                argv = [sys.executable, script, admin.host, str(admin.port),
                        admin.username or "", admin.password or "", name, url]  # fmt: skip
                floor = subprocess.Popen(argv, stdout=subprocess.PIPE)
                self.children.append(floor)
                floors.append(floor)
                if floor.stdout is None or floor.stdout.readline().strip() != b"ready":
                    raise RuntimeError(f"the floor process {name} did not subscribe")
        except BaseException:
            self.stop_floor(floors, names)
            raise
        return floors, names

    def stop_floor(self, floors: list[subprocess.Popen[bytes]], names: list[str]) -> None:
        """SIGTERM each (it stores what it holds), then end the sessions, as for ingest."""
        for floor in floors:
            self.stop_ingest(floor, [])
        self.end_sessions(names)

    # naive

    def run_naive(self, scenario: Scenario, url: str) -> Outcome:
        outcome = Outcome(scenario)
        ready, stop, results = self.context.Event(), self.context.Event(), self.context.Queue()
        bridge = self.context.Process(
            target=run_naive_bridge, args=(self.stack.admin, url, ready, stop, results),
            name="naive-bridge",
        )  # fmt: skip
        bridge.start()
        self.children.append(bridge)
        try:
            if not ready.wait(30):
                raise RuntimeError(f"the naive bridge did not subscribe: {drain_queue(results)}")
            processes, publisher_results, (_, t_measure, t_end) = self.publishers(scenario)
            sleep_until(t_measure)
            meter = CpuMeter(self.cpu_groups(naive=[bridge.pid or 0], publishers=processes))
            sleep_until(t_end)
            outcome.cpu, outcome.threads = meter.stop()
            self.collect(processes, publisher_results, outcome)
            stop.set()
            with contextlib.suppress(Exception):
                report = results.get(timeout=20)
                if "error" in report:
                    raise RuntimeError(f"the naive bridge failed: {report['error']}")
        finally:
            stop.set()
            bridge.join(timeout=20)
            stop_child(bridge)
            self.children.remove(bridge)
        self.measure(url, outcome, t_measure, t_end, latency=False)
        return outcome

    # figures

    def cpu_groups(self, **roles: Sequence[Any]) -> dict[str, Sequence[int]]:
        groups: dict[str, Sequence[int]] = {
            "postgres": [self.stack.postgres.pid() or 0],
            "mosquitto": [self.stack.broker.pid() or 0],
        }
        for role, members in roles.items():
            groups[role] = [m if isinstance(m, int) else m.pid for m in members]
        return groups

    def measure(self, url: str, outcome: Outcome, t_measure: float, t_end: float,
                *, latency: bool) -> None:  # fmt: skip
        window = t_end - t_measure
        commit = COMMITTED
        with psycopg.connect(url, autocommit=True) as conn:
            readings = one(conn, f"SELECT count(*) FROM readings WHERE {NOT_PROBE}"  # noqa: S608
                           f" AND {commit} > %s AND {commit} <= %s", t_measure, t_end)  # fmt: skip
            outcome.committed_readings_s = readings / window
            # a batch is a transaction: its readings share their xmin
            batches = one(conn, f"SELECT count(DISTINCT xmin::text) FROM readings"  # noqa: S608
                          f" WHERE {NOT_PROBE} AND {commit} > %s AND {commit} <= %s",
                          t_measure, t_end)  # fmt: skip
            outcome.batches_s = batches / window
            outcome.committed_msgs_s = outcome.committed_readings_s / outcome.scenario.per_message
            table, per_message = _message_log(outcome.scenario) if latency else ("readings", 1)
            committed_by_end = one(conn, f"SELECT count(*) FROM {table}"  # noqa: S608
                                   f" WHERE {NOT_PROBE} AND {commit} <= %s", t_end)  # fmt: skip
            if latency:
                outcome.backlog_msgs = outcome.sent - committed_by_end // per_message
                outcome.rejected = one(conn, "SELECT count(*) FROM rejected_readings")
                self.measure_latency(conn, outcome, t_measure, t_end)
                self.measure_drain(conn, outcome, t_end)
            else:
                outcome.backlog_msgs = outcome.sent - committed_by_end

    @staticmethod
    def measure_latency(conn: psycopg.Connection[Any], outcome: Outcome, t_measure: float,
                        t_end: float) -> None:  # fmt: skip
        """Commit minus sent_at of the messages sent in the window (all of them, when ingest
        drained; else the figures would flatter it and are not given)."""
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99, 0.999])"  # noqa: S608
            "           WITHIN GROUP (ORDER BY commit_ms - sent_ms),"
            "       max(commit_ms - sent_ms), count(*),"
            "       percentile_cont(ARRAY[0.5, 0.99])"
            "           WITHIN GROUP (ORDER BY received_ms - sent_ms),"
            "       percentile_cont(ARRAY[0.5, 0.99])"
            "           WITHIN GROUP (ORDER BY commit_ms - received_ms)"
            " FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000"
            "              AS commit_ms,"
            "              extract(epoch FROM received_at) * 1000 AS received_ms,"
            "              split_part(msg_id, ':', 1)::bigint / 1000.0 AS sent_ms"
            f"      FROM {_message_log(outcome.scenario)[0]}"
            f"      WHERE {NOT_PROBE}"
            "         AND split_part(msg_id, ':', 1)::bigint BETWEEN %s AND %s) s",
            (int(t_measure * 1e6), int(t_end * 1e6)),
        ).fetchone()
        assert row is not None
        outcome.latency_n = int(row[2])
        if outcome.drained and row[0] is not None:
            outcome.p50_ms, outcome.p99_ms, outcome.p999_ms = (float(v) for v in row[0])
            outcome.max_ms = float(row[1])
            # the two legs: publishers and broker (to the broker's receive stamp), then
            # ingest and the database (from the stamp to the commit)
            outcome.to_broker_ms = (float(row[3][0]), float(row[3][1]))
            outcome.in_platform_ms = (float(row[4][0]), float(row[4][1]))

    @staticmethod
    def measure_drain(conn: psycopg.Connection[Any], outcome: Outcome, t_end: float) -> None:
        """Readings/s committed after the publishers stopped, when there was a backlog of
        more than a second of work: ingest with the machine to itself."""
        if outcome.backlog_msgs * outcome.scenario.per_message < outcome.committed_readings_s:
            return
        commit = COMMITTED
        row = conn.execute(
            f"SELECT count(*), max({commit}) FROM readings"  # noqa: S608
            f" WHERE {NOT_PROBE} AND {commit} > %s",
            (t_end + 0.5,),
        ).fetchone()
        assert row is not None
        if row[0] and row[1] is not None and float(row[1]) > t_end + 1.5:
            outcome.drain_readings_s = int(row[0]) / (float(row[1]) - t_end - 0.5)

    # profile

    def start_profile(self, scenario: Scenario, pid: int, seconds: float) -> Any:
        directory = self.options.profile_dir
        if not scenario.profile or directory is None:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / f"ingest-{scenario.key}.txt"
        process = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
             "--gil", "--rate", "100", "--duration", str(max(1, int(seconds) - 1)),
             "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.children.append(process)
        return process, out

    def finish_profile(self, spy: tuple[subprocess.Popen[bytes], Path], scenario: Scenario
                       ) -> list[str]:  # fmt: skip
        process, out = spy
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stop_child(process)
            return ["py-spy did not finish"]
        finally:
            if process in self.children:
                self.children.remove(process)
        if not out.exists():
            return [f"py-spy wrote nothing: {err.decode(errors='replace').strip()[-300:]}"]
        return summarise_profile(out.read_text(), f"{scenario.title}: {out}")


def _message_log(scenario: Scenario) -> tuple[str, int]:
    """Where a scenario's stored messages are counted, and rows a message there: ingest's
    message log (a row a message), or the floor's readings (it keeps no log)."""
    if scenario.consumer == "floor":
        return "readings", scenario.per_message
    return "device_messages", 1
