"""The simulated pilot end to end: onboarded through the real API, devices over the real
broker, readings through a real ingest worker into the store — outages show up as late
readings, never as loss, and a killed simulator resumes without taking anything twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from api_fixtures import make_settings, served, template_copy
from gateway_fixtures import run_admin
from ingest_fixtures import RunningWorker

from ehealthlab.api.client import GatewayClient
from ehealthlab.simulators.measurement_stream import pilot_measurements
from ehealthlab.simulators.municipality_broadband import outage_schedules
from ehealthlab.simulators.onboarding import STATE_FILE, onboard
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.runner import PilotRun
from ehealthlab.simulators.scenario import load_scenario

SCENARIO = Path(__file__).parent / "data" / "small-pilot.toml"
BALME, TORINO = "001019", "001272"


@pytest.fixture
def lab(plain_admin_url, migrated_template, mosquitto_broker, tmp_path):
    """A fresh store, the API over real HTTP, an ingest worker and an operator token."""
    with template_copy(plain_admin_url, migrated_template) as database_url:
        settings = make_settings(database_url, mosquitto_broker, tmp_path / "no-stack")
        with served(settings) as url:
            worker = RunningWorker(settings, f"ingest-sim-{uuid.uuid4().hex[:6]}")
            try:
                token = run_admin(settings, "admin", "bootstrap")["token"]
                yield {
                    "settings": settings,
                    "url": url,
                    "token": token,
                    "database_url": database_url,
                }
            finally:
                worker.close()


def expected_readings(scenario, patients) -> int:
    """Readings the patients take: one per metric of each measurement."""
    return sum(len(item.measurement.values) for item in pilot_measurements(scenario, patients))


def wait_for_count(database_url: str, expected: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(database_url) as conn:
            got = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def stored(database_url: str, sql: str, *params):
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


def test_an_inner_area_outage_shows_as_backlog_and_late_readings_not_loss(lab, tmp_path):
    scenario = load_scenario(SCENARIO)
    patients = simulated_patients(scenario)
    client = GatewayClient(lab["url"], lab["token"])
    onboarded = onboard(client, patients, tmp_path / "run")
    report = PilotRun(scenario, patients, onboarded, tmp_path / "run", speed=None).run()
    total = expected_readings(scenario, patients)
    assert report.measurements > 0 and report.pending_readings == 0
    assert report.deferred_by_outage > 0  # Balme's devices buffered during the outage
    assert wait_for_count(lab["database_url"], total) == total
    url = lab["database_url"]
    # nothing lost: every device's seqs run from 1 without a gap, each stored once
    gaps = stored(url, "SELECT device_id FROM readings GROUP BY device_id"
                       " HAVING count(DISTINCT seq) <> max(seq) OR min(seq) <> 1")  # fmt: skip
    assert gaps == []
    assert stored(url, "SELECT count(*) FROM duplicate_readings") == [(0,)]
    assert stored(url, "SELECT count(*) FROM rejected_readings") == [(0,)]
    # every reading is a simulated device's, attributed to its patient
    assert stored(url, "SELECT count(*) FROM readings r JOIN devices d USING (device_id)"
                       " WHERE d.simulated AND r.patient_id IS NOT NULL") == [(total,)]  # fmt: skip
    # the outage: Balme's readings taken while its link was down arrive after it, late
    [outage] = outage_schedules(scenario, patients)[BALME].outages
    late = """SELECT e.municipality, count(*) FILTER (WHERE r.received_at - r.measured_at
                  > interval '1 hour'), min(r.received_at) FILTER (WHERE r.measured_at
                  BETWEEN %s AND %s)
              FROM readings r JOIN enrolments e ON e.device_id = r.device_id
              GROUP BY e.municipality ORDER BY 1"""
    by_place = {m: (n, first) for m, n, first in stored(url, late, outage.start, outage.end)}
    late_in_balme, first_from_outage = by_place[BALME]
    assert late_in_balme > 0 and first_from_outage >= outage.end
    assert by_place[TORINO][0] == 0
    # the receive times are simulated (the devices are registered as simulated)
    [(earliest, latest)] = stored(url, "SELECT min(received_at), max(received_at) FROM readings")
    assert scenario.starts_at <= earliest and latest < scenario.ends_at + timedelta(days=2)


def test_a_killed_simulator_resumes_its_seqs_and_flushes_its_buffer(lab, tmp_path):
    """SIGKILL mid-run, start again over the same state directory: every reading is stored
    exactly once, no seq reused or skipped."""
    scenario = load_scenario(SCENARIO)
    patients = simulated_patients(scenario)
    total = expected_readings(scenario, patients)
    env = {
        **os.environ,
        "EHEALTHLAB_API_URL": lab["url"],
        "EHEALTHLAB_TOKEN": lab["token"],
        "EHEALTHLAB_STATE_DIR": str(tmp_path / "state"),
    }
    argv = [sys.executable, "-m", "ehealthlab.cli", "simulate", str(SCENARIO),
            "--speed", "20000", "--state-dir", str(tmp_path / "run")]  # fmt: skip
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 300  # bounds a failure only
        while time.monotonic() < deadline and first.poll() is None:
            count = stored(lab["database_url"], "SELECT count(*) FROM readings")[0][0]
            if count >= total // 3:
                break
            time.sleep(0.05)
        assert first.poll() is None, log.read_text()
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=10)
    killed_at = stored(lab["database_url"], "SELECT count(*) FROM readings")[0][0]
    assert 0 < killed_at < total
    resume = [*argv[:-4], "--backfill", "--state-dir", str(tmp_path / "run")]
    again = subprocess.run(
        resume, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0, again.stderr
    assert "taken before a restart" in again.stderr
    assert wait_for_count(lab["database_url"], total) == total
    url = lab["database_url"]
    gaps = stored(url, "SELECT device_id FROM readings GROUP BY device_id"
                       " HAVING count(DISTINCT seq) <> max(seq) OR min(seq) <> 1")  # fmt: skip
    assert gaps == []
    assert stored(url, "SELECT count(*) FROM readings") == [(total,)]
    # a message the kill caught in flight may come again; never as a duplicate reading
    assert stored(url, "SELECT count(*) FROM duplicate_readings") == [(0,)]


def test_accelerated_time_runs_the_period_at_the_chosen_speed(lab, tmp_path):
    scenario = load_scenario(SCENARIO)
    patients = simulated_patients(scenario)[:2]
    onboarded = onboard(GatewayClient(lab["url"], lab["token"]), patients, tmp_path / "run")
    speed = 4 * 86400 / 3  # the four days in three seconds
    started = time.monotonic()
    report = PilotRun(scenario, patients, onboarded, tmp_path / "run", speed=speed).run()
    elapsed = time.monotonic() - started
    total = expected_readings(scenario, patients)
    assert wait_for_count(lab["database_url"], total) == total
    assert report.simulated_now <= scenario.ends_at
    # measurements wait for their simulated time: the run lasts about the period / speed
    last = max(item.taken_at for item in pilot_measurements(scenario, patients))
    assert elapsed >= (last - scenario.starts_at).total_seconds() / speed * 0.9


def test_a_device_that_can_no_longer_connect_is_reported_and_the_run_ends(lab, tmp_path):
    """A revoked device keeps its readings and retries with a growing delay; the backfill
    still ends, naming it as undelivered, and every other device's readings are stored."""
    scenario = load_scenario(SCENARIO)
    patients = simulated_patients(scenario)
    onboarded = onboard(GatewayClient(lab["url"], lab["token"]), patients, tmp_path / "run")
    victim = next(iter(onboarded.devices.values()))
    revoke = urllib.request.Request(
        f"{lab['url']}/api/v1/devices/{victim.device_id}",
        method="DELETE",
        headers={"Authorization": f"Bearer {onboarded.token_of(victim.startup)}"},
    )
    with urllib.request.urlopen(revoke, timeout=10) as answer:
        assert answer.status == 204
    stop = threading.Event()
    timer = threading.Timer(600, stop.set)  # bounds a failure only
    timer.start()
    try:
        report = PilotRun(scenario, patients, onboarded, tmp_path / "run", speed=None).run(stop)
    finally:
        timer.cancel()
    assert not stop.is_set(), "the backfill did not end by itself"
    assert list(report.undelivered) == [victim.device_id]
    assert report.pending_readings > 0


def test_onboarding_resumes_after_a_kill_between_the_apis_answer_and_its_own_note(lab, tmp_path):
    """The API created a patient, a device and an enrolment but the run died before writing
    them down: the rerun finds them (the device with new credentials) instead of failing on
    409, and creates nothing twice."""
    scenario = load_scenario(SCENARIO)
    patients = simulated_patients(scenario)[:2]
    client = GatewayClient(lab["url"], lab["token"])
    state = tmp_path / "run"
    first = onboard(client, patients, state)
    forgotten = next(iter(first.devices))
    sim_patient = forgotten.split("/")[0]
    notes = json.loads((state / STATE_FILE).read_text())
    del notes["devices"][forgotten]
    del notes["patients"][sim_patient]
    (state / STATE_FILE).write_text(json.dumps(notes))
    again = onboard(client, patients, state)
    assert again.patients == first.patients
    assert again.devices[forgotten].device_id == first.devices[forgotten].device_id
    assert again.devices[forgotten].enrolment_id == first.devices[forgotten].enrolment_id
    with psycopg.connect(lab["database_url"]) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM devices),"
            " (SELECT count(*) FROM enrolments)"
        ).fetchone()
    assert counts == (len(first.patients), len(first.devices), len(first.devices))
    # the new credentials work: the device's readings still arrive
    report = PilotRun(scenario, patients, again, state, speed=None).run()
    assert report.undelivered == {} and report.pending_readings == 0
