"""The conformance check: pure verdicts, then a clean and a defective device end to end
(real broker, ingest worker, API server and the `ehealthlab conformance` command)."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from api_fixtures import served, template_copy
from conftest import settings_for
from gateway_fixtures import run_admin
from ingest_fixtures import RunningWorker

from ehealthlab import cli
from ehealthlab.contract.topics import readings_topic, status_topic
from ehealthlab.gateway.conformance import (
    MessageSeen,
    Observations,
    RejectionSeen,
    StatusSeen,
    assess,
)
from ehealthlab.gateway.conformance_command import render
from ehealthlab.mqtt import BrokerAddress, MqttConnection, Will

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def seen(i: int, *, qos: int = 1, offset: float = 1.5, age_s: float = 2, readings: int = 2):
    received = NOW + timedelta(minutes=i)
    return MessageSeen(
        received,
        f"m{i}",
        qos,
        300,
        readings,
        readings,
        0,
        0,
        offset,
        received - timedelta(seconds=age_s),
        received,
    )


def observations(**changes) -> Observations:
    base = {
        "device_id": "bpm-1",
        "device_type": "blood_pressure_monitor",
        "window_from": NOW,
        "window_to": NOW + timedelta(hours=1),
        "messages": [seen(i) for i in range(3)],
        "rejections": [],
        "seqs": list(range(1, 7)),
        "status_events": [StatusSeen(NOW, "online", True), StatusSeen(NOW, "offline", False)],
    }
    base.update(changes)
    return Observations(**base)


def verdicts(obs: Observations) -> dict[str, str]:
    return {c.id: c.verdict for c in assess(obs).checks}


def reject(reason: str, seq: int | None = 3, index: int | None = 0) -> RejectionSeen:
    return RejectionSeen(NOW, reason, f"{reason} detail", seq, index, "m1")


def test_a_clean_device_is_conformant():
    report = assess(observations())
    assert report.verdict == "conformant"
    assert report.failed == []


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"rejections": [reject("malformed_json", None, None)]}, "schema"),
        ({"rejections": [reject("schema_violation")]}, "schema"),
        ({"rejections": [reject("unit_mismatch")]}, "units"),
        ({"rejections": [reject("out_of_range")]}, "catalogue"),
        ({"rejections": [reject("metric_not_for_device_type")]}, "catalogue"),
        ({"rejections": [reject("timestamp_in_future")]}, "clock"),
        ({"rejections": [reject("conflicting_duplicate")]}, "duplicates"),
        ({"messages": [seen(0), seen(1, offset=-600)]}, "clock"),
        ({"messages": [seen(0), seen(1, qos=0)]}, "qos"),
        ({"seqs": [1, 2, 5, 6]}, "seq"),
        ({"status_events": [StatusSeen(NOW, "invalid", True)]}, "status"),
        ({"status_events": [StatusSeen(NOW, "offline", True)]}, "status"),
        ({"status_events": []}, "status"),
    ],
)
def test_each_defect_fails_its_own_check(changes, check):
    report = assess(observations(**changes))
    assert report.verdict == "not_conformant"
    failed = {c.id for c in report.failed}
    assert failed == {check}
    assert all(c.advice for c in report.failed)


def test_clock_at_the_tolerance_passes_and_just_beyond_fails():
    assert verdicts(observations(messages=[seen(0, offset=120.0)]))["clock"] == "pass"
    assert verdicts(observations(messages=[seen(0, offset=-120.5)]))["clock"] == "fail"


def test_missing_seqs_are_named_as_ranges():
    [check] = [c for c in assess(observations(seqs=[1, 2, 5, 9, 10])).checks if c.id == "seq"]
    assert check.summary == "5 of 10 seq numbers never arrived"
    assert check.details == ["missing: 3-4, 6-8"]


def test_backlog_oldest_first_passes_and_out_of_order_warns():
    backlog = [seen(0, age_s=3600), seen(1, age_s=1800)]
    assert verdicts(observations(messages=backlog))["backlog"] == "pass"
    backwards = [seen(0, age_s=600 + 60), seen(1, age_s=7200)]
    assert verdicts(observations(messages=backwards))["backlog"] == "warn"


def test_a_skewed_clock_alone_does_not_look_like_a_backlog():
    """A device 15 minutes behind sends fresh readings whose `at` is 15 minutes before the
    receive time: the age that counts is on the device's clock (sent_at - at)."""
    fresh_but_skewed = [seen(i, offset=900, age_s=905) for i in range(3)]
    assert verdicts(observations(messages=fresh_but_skewed))["backlog"] == "not_observed"
    old_and_skewed = [seen(0, offset=900, age_s=900 + 3600)]
    assert verdicts(observations(messages=old_and_skewed))["backlog"] == "pass"


def test_nothing_observed_is_not_enough_to_judge():
    report = assess(observations(messages=[], seqs=[], status_events=[]))
    assert report.verdict == "not_enough_observed"
    assert report.failed == []


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(plain_admin_url, migrated_template, mosquitto_broker, tmp_path_factory):
    """API server (uvicorn in a thread, real HTTP), an ingest worker and a start-up."""
    b = mosquitto_broker
    with template_copy(plain_admin_url, migrated_template) as database_url:
        settings = settings_for(database_url, b, tmp_path_factory)
        with served(settings) as url:
            worker = RunningWorker(settings, f"ingest-conf-{uuid.uuid4().hex[:6]}")
            try:
                operator = run_admin(settings, "admin", "bootstrap")["token"]
                startup = _post(
                    url, operator, "/api/v1/organisations", {"kind": "startup", "name": "Acme"}
                )
                yield {
                    "url": url,
                    "token": startup["token"],
                    "admin": BrokerAddress(b.host, b.port, b.admin_username, b.admin_password),
                    "database_url": database_url,
                }
            finally:
                worker.close()


def _post(url: str, token: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def device(lab) -> tuple[str, MqttConnection]:
    mqtt = _post(
        lab["url"],
        lab["token"],
        "/api/v1/devices",
        {"type": "blood_pressure_monitor", "model": "BP-1", "serial": uuid.uuid4().hex},
    )["mqtt"]
    connection = MqttConnection(
        lab["admin"].as_user(mqtt["username"], mqtt["password"]),
        mqtt["client_id"],
        will=Will(mqtt["topics"]["status"], b'{"state": "offline"}'),
    ).connect()
    return mqtt["username"], connection


def readings_message(seqs, *, unit="mm[Hg]", clock_skew_s=0.0, age=timedelta(0)) -> bytes:
    now = datetime.now(UTC)
    return orjson.dumps(
        {
            "schema": "ehl.readings/1",
            "msg_id": str(uuid.uuid4()),
            "sent_at": (now + timedelta(seconds=clock_skew_s)).isoformat(),
            "readings": [
                {
                    "seq": s,
                    "metric": "bp_systolic",
                    "value": 120 + s % 7,
                    "unit": unit,
                    "at": (now - age + timedelta(seconds=s + clock_skew_s)).isoformat(),
                }
                for s in seqs
            ],
        }
    )


def stored(lab, device_id: str) -> tuple[int, int]:
    """How many of the device's messages ingest logged, and status messages presence did."""
    with psycopg.connect(lab["database_url"]) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM device_messages WHERE device_id = %(d)s),"
            " (SELECT count(*) FROM device_status_events WHERE device_id = %(d)s)",
            {"d": device_id},
        ).fetchone()


def judge(lab, device_id: str, capsys, *, messages: int, status_events: int) -> tuple[int, dict]:
    """The conformance report, once ingest and presence have stored all that was sent (each
    message and its readings in one transaction, each status message in one too)."""
    expected = (messages, status_events)
    deadline = time.monotonic() + 60  # bounds a failure only
    while (got := stored(lab, device_id)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got == expected, f"(messages, status events) stored: {got}, not {expected}"
    capsys.readouterr()
    status = cli.main(
        [
            "conformance",
            device_id,
            "--past",
            "--minutes",
            "5",
            "--json",
            "--api-url",
            lab["url"],
            "--token",
            lab["token"],
        ]
    )
    return status, json.loads(capsys.readouterr().out)


def test_a_clean_device_passes_end_to_end(lab, capsys):
    device_id, connection = device(lab)
    connection.publish(status_topic(device_id), b'{"state": "online"}', retain=True)
    connection.publish(readings_topic(device_id), readings_message([1, 2, 3]))
    connection.publish(readings_topic(device_id), readings_message([4, 5], age=timedelta(hours=2)))
    connection.publish(readings_topic(device_id), readings_message([6]))
    connection.drop()  # the Last Will says offline
    status, report = judge(lab, device_id, capsys, messages=3, status_events=2)
    failed = [c for c in report["checks"] if c["verdict"] == "fail"]
    assert (status, report["verdict"], failed) == (0, "conformant", [])
    by_id = {c["id"]: c for c in report["checks"]}
    assert by_id["status"]["summary"] == "online on connect, offline when it went away"
    assert by_id["backlog"]["verdict"] == "pass"
    assert by_id["seq"]["summary"] == "6 consecutive seq numbers, 1 to 6"
    request = urllib.request.Request(
        f"{lab['url']}/api/v1/devices/{device_id}/messages",
        headers={"Authorization": f"Bearer {lab['token']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        messages = json.loads(response.read())
    assert [(m["readings"], m["accepted"], m["rejected"], m["qos"]) for m in messages] == [
        (1, 1, 0, 1),
        (2, 2, 0, 1),
        (3, 3, 0, 1),
    ]


def test_a_device_with_known_defects_is_told_what_to_fix(lab, capsys):
    device_id, connection = device(lab)
    topic = readings_topic(device_id)
    try:
        connection.publish(topic, readings_message([1, 2]))
        connection.publish(topic, readings_message([3], unit="mmHg"))  # wrong unit
        connection.publish(topic, readings_message([7, 8], clock_skew_s=900))  # skewed clock, gap
        connection.publish(topic, readings_message([9]), qos=0)
    finally:
        connection.close()  # clean: no Will, and no status ever said
    status, report = judge(lab, device_id, capsys, messages=4, status_events=0)
    assert (status, report["verdict"]) == (1, "not_conformant")
    failed = {c["id"]: c for c in report["checks"] if c["verdict"] == "fail"}
    assert set(failed) == {"units", "clock", "seq", "qos", "status"}
    assert "mm[Hg]" in failed["units"]["details"][0]
    assert failed["seq"]["details"] == ["missing: 4-6"]
    text = render(report)
    assert "NOT CONFORMANT" in text and "-> set the device clock by NTP" in text


def test_the_command_says_what_is_wrong_in_one_line(lab, capsys):
    assert (
        cli.main(
            [
                "conformance",
                "bpm-unknown",
                "--past",
                "--api-url",
                lab["url"],
                "--token",
                lab["token"],
            ]
        )
        == 1
    )
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli.main(["conformance", "x", "--past", "--api-url", lab["url"], "--token", "bad"]) == 1
    assert "refused the token" in capsys.readouterr().err
    assert (
        cli.main(["conformance", "x", "--past", "--api-url", "http://127.0.0.1:9", "--token", "t"])
        == 1
    )
    assert "cannot reach the API" in capsys.readouterr().err
