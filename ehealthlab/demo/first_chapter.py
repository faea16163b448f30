"""The demo's first chapter: a day of the pilot played by hand, then a simulated week.

CMTo admits a start-up and a health provider (both flagged simulated, like everything the
demo makes); the start-up registers a blood-pressure cuff; the provider enrols a patient of
Ala di Stura (an inner area) with a care plan; the cuff connects, says it is online, sends its
morning and evening readings — one with a wrong unit, one high enough to raise an alert — and
goes offline. It prints what the LAB made of it: readings stored, the rejection and its
reason, the alert, and the conformance report. Then a simulated week of 24 patients in Torino
and the Valli di Lanzo (`simulators/scenarios/demo-week.toml`) is backfilled through the same
API, broker and ingest, and the chapter shows what the broadband did per SNAI class and reads
one patient's latest Observations back through the FHIR API.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from ehealthlab.api.client import GatewayClient
from ehealthlab.contract.pilot_time import pilot_day
from ehealthlab.demo.common import api, say, wait_until
from ehealthlab.evaluation.compute import evaluate
from ehealthlab.evaluation.dataset import Period
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.gateway.conformance_command import render
from ehealthlab.mqtt import BrokerAddress, MqttConnection, Will
from ehealthlab.settings import Settings
from ehealthlab.simulators.measurement_stream import pilot_measurements
from ehealthlab.simulators.onboarding import PROVIDER_NAME, onboard
from ehealthlab.simulators.patients import simulated_patients
from ehealthlab.simulators.runner import PilotRun
from ehealthlab.simulators.scenario import load_scenario
from ehealthlab.store.db import connect

DEMO_WEEK = "scenarios/demo-week.toml"
DEMO_MUNICIPALITY = "001003"  # Ala di Stura: SNAI E (peripheral), 58 minutes from its pole


def play_a_day(url: str, operator: str) -> None:
    suffix = uuid.uuid4().hex[:6]
    startup = api(
        url,
        operator,
        "POST",
        "/organisations",
        {"kind": "startup", "name": f"Demo MedTech {suffix}", "simulated": True},
    )["token"]
    provider = api(
        url,
        operator,
        "POST",
        "/organisations",
        {"kind": "provider", "name": f"ASL TO4 demo {suffix}", "simulated": True},
    )["token"]
    device = api(
        url,
        startup,
        "POST",
        "/devices",
        {"type": "blood_pressure_monitor", "model": "BP-200", "serial": suffix},
    )
    device_id, mqtt = device["device_id"], device["mqtt"]
    say(f"\nCMTo admitted a start-up and a provider; the start-up registered cuff {device_id}")
    patient = api(
        url, provider, "POST", "/patients", {"identifier": f"DEMO-{suffix}", "label": "Signora R."}
    )["id"]
    today = datetime.now(UTC).date()
    api(
        url,
        provider,
        "POST",
        "/enrolments",
        {
            "patient_id": patient,
            "device_id": device_id,
            "municipality": DEMO_MUNICIPALITY,
            "start": (today - timedelta(days=1)).isoformat(),
            "end": None,
            "care_plan": {"bp_systolic": 2, "bp_diastolic": 2},
        },
    )
    say(f"the provider enrolled patient {patient} in Ala di Stura, 2 readings a day")

    address = BrokerAddress(
        str(mqtt["host"]), int(mqtt["port"]), mqtt["username"], mqtt["password"]
    )
    topics = mqtt["topics"]
    cuff = MqttConnection(
        address, mqtt["client_id"], will=Will(topics["status"], b'{"state": "offline"}')
    )
    cuff.connect()
    cuff.publish(topics["status"], b'{"state": "online"}', retain=True)
    now = datetime.now(UTC).replace(microsecond=0)
    morning, evening = now - timedelta(hours=10), now - timedelta(minutes=5)
    for msg_id, readings in (
        ("morning", _cuff(1, morning, 138, 86, 71)),
        ("evening", _cuff(4, evening, 186, 104, 88, unit="mmHg")),  # a unit spelt wrong
        ("evening-again", _cuff(7, evening + timedelta(minutes=1), 184, 102, 86)),  # alert
    ):
        payload = {
            "schema": "ehl.readings/1",
            "msg_id": msg_id,
            "sent_at": now.isoformat(),
            "readings": readings,
        }
        cuff.publish(topics["readings"], orjson.dumps(payload))
    cuff.drop()  # the battery dies: the Last Will says offline
    say("the cuff came online, sent its morning and evening readings and went offline\n")
    # wait for what is shown: ingest's three message rows and presence's offline status
    wait_until(
        lambda: (
            len(api(url, startup, "GET", f"/devices/{device_id}/messages")) >= 3
            and api(url, startup, "GET", f"/devices/{device_id}")["status"] == "offline"
        ),
        what="the cuff's three messages and its going offline",
    )

    for m in reversed(api(url, startup, "GET", f"/devices/{device_id}/messages")):
        say(
            f"  message {m['msg_id']!r}: {m['readings']} readings, {m['accepted']} stored, "
            f"{m['rejected']} rejected"
        )
    for r in api(url, startup, "GET", f"/devices/{device_id}/rejects"):
        say(f"  rejected seq {r['seq']}: {r['reason']}: {r['detail']}")
    for a in api(url, provider, "GET", "/alerts?status=open"):
        say(
            f"  alert for the provider: {a['rule']} ({a['reading']['metric']} "
            f"{a['reading']['value']:g}) on {a['day']}"
        )
    state = api(url, startup, "GET", f"/devices/{device_id}")
    say(f"  the cuff is {state['status']}, last seen {state['last_seen']}\n")
    report = api(url, startup, "GET", f"/devices/{device_id}/conformance?minutes=5")
    say(render(report))


def _cuff(
    seq: int, at: datetime, systolic: float, diastolic: float, pulse: float, *, unit: str = "mm[Hg]"
) -> list[dict[str, object]]:
    """One cuff inflation: systolic, diastolic and pulse sharing their `at`."""
    stamp = at.isoformat()
    return [
        {"seq": seq, "metric": "bp_systolic", "value": systolic, "unit": unit, "at": stamp},
        {"seq": seq + 1, "metric": "bp_diastolic", "value": diastolic, "unit": unit, "at": stamp},
        {"seq": seq + 2, "metric": "heart_rate", "value": pulse, "unit": "/min", "at": stamp},
    ]


def simulate_a_week(settings: Settings, url: str, operator: str, state_dir: Path) -> None:
    scenario = load_scenario(Path(str(resources.files("ehealthlab.simulators") / DEMO_WEEK)))
    patients = simulated_patients(scenario)
    devices = sum(len(p.devices) for p in patients)
    say(f"\n{scenario.name}: {len(patients)} patients, {devices} simulated devices, backfilled")
    run_dir = state_dir / "simulations" / f"demo-{uuid.uuid4().hex[:6]}"
    onboarded = onboard(GatewayClient(url, operator), patients, run_dir)
    report = PilotRun(scenario, patients, onboarded, run_dir, speed=None).run()
    say(
        f"  {report.measurements} measurements in {report.wall_seconds:.1f} s; "
        f"{report.deferred_by_outage} sends held back by outages, "
        f"{report.session_drops} broken sessions resent"
    )
    expected = sum(len(i.measurement.values) for i in pilot_measurements(scenario, patients))
    device_ids = [d.device_id for d in onboarded.devices.values()]
    with connect(settings) as conn:

        def all_stored() -> bool:
            stored = conn.execute(
                "SELECT count(*) FROM readings WHERE device_id = ANY(%s)", (device_ids,)
            ).fetchone()
            conn.rollback()
            return stored is not None and stored[0] >= expected

        wait_until(all_stored, what=f"the week's {expected} readings in the store")
        conn.rollback()
        week = Period(pilot_day(scenario.starts_at), pilot_day(scenario.ends_at) + timedelta(1))
        data = fetch_dataset(conn, week, "simulated")
    # the evaluation's own numbers (docs/indicators.md), for the simulated population
    by_class = evaluate(data, "snai_class", seed=settings.evaluation_seed)
    say(f"  {'SNAI class':<12}{'patients':>9}{'readings':>9}{'latency p50':>13}"
         f"{'p95':>9}{'> 1 h late':>12}{'lost':>8}")  # fmt: skip
    for snai_class, group in by_class.groups.items():
        v = group.values
        say(
            f"  {snai_class:<12}{group.patients:>9}{int(group.per_patient['accepted'].sum()):>9}"
            f"{_number(v['latency_p50_s']):>11} s{_number(v['latency_p95_s']):>7} s"
            f"{_share(v['late_share']):>12}{_share(v['loss_rate']):>8}"
        )
    say(f"  {by_class.all.values['alerts']} clinical alerts raised for the provider")
    provider = onboarded.token_of(PROVIDER_NAME)
    patient = next(iter(onboarded.patients.values()))
    lastn = _fhir(url, provider, f"/Observation/$lastn?patient={patient}&max=1")
    say(f"\nFHIR: GET /fhir/Observation/$lastn?patient={patient}&max=1 (the provider's token)")
    for entry in lastn.get("entry", []):
        say("  " + _observation_line(entry["resource"]))


def _number(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _share(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def _fhir(url: str, token: str, path: str) -> Any:
    return GatewayClient(url, token).get("/fhir" + path)


def _observation_line(resource: dict[str, Any]) -> str:
    code = resource["code"]["coding"][0]
    when = resource.get("effectiveDateTime", "")
    if "valueQuantity" in resource:
        quantity = resource["valueQuantity"]
        value = f"{quantity['value']:g} {quantity.get('unit', '')}"
    else:
        value = (
            " / ".join(
                f"{c['valueQuantity']['value']:g}"
                for c in resource.get("component", [])
                if "valueQuantity" in c
            )
            + " mm[Hg]"
        )
    return f"{code.get('display', code['code'])} (LOINC {code['code']}): {value} at {when}"
