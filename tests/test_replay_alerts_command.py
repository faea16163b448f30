"""Alert-threshold replay as the lab runs it: the rules file of other thresholds to compare,
and end to end, where ingest's own `store_judged` fills a real store (and its alerts table),
then `ehealthlab replay-alerts` replays the current rules over it and finds exactly the
alerts ingest stored; wrong arguments get one line and exit status 2."""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
from api_fixtures import template_copy
from replay_fixtures import PERIOD, START, utc

from ehealthlab.cli import OneLineParser
from ehealthlab.errors import ConfigurationError, EhealthlabError, InvalidInputError
from ehealthlab.evaluation.replay import Period, replay
from ehealthlab.evaluation.replay_command import register
from ehealthlab.evaluation.replay_fetch import fetch_replay_data
from ehealthlab.evaluation.replay_plan import load_plan, plan_of
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.settings import Settings
from ehealthlab.store.readings import ReadingWriter

# -- the rules file ---------------------------------------------------------------------------


def test_a_rules_file_with_several_settings(tmp_path):
    path = tmp_path / "replay.toml"
    path.write_text(
        "[thresholds.bp_systolic_high]\nthreshold = [190, 170]\n\n"
        '[thresholds.spo2_very_low]\nmetric = "spo2"\nop = "<="\nthreshold = [85, 88]\n\n'
        "[weight_gain]\ngain_kg = [1.5, 2.5]\nwindow_hours = 48\n"
    )
    plan = load_plan(path, DEFAULT_RULES)
    labels = [(s.rule_id, s.label, s.current) for s in plan.settings]
    assert labels[:3] == [
        ("bp_systolic_high", ">= 170", False),
        ("bp_systolic_high", ">= 180", True),
        ("bp_systolic_high", ">= 190", False),
    ]
    assert ("spo2_low", "<= 90", True) in labels
    assert [x for x in labels if x[0] == "spo2_very_low"] == [
        ("spo2_very_low", "<= 88", False),
        ("spo2_very_low", "<= 85", False),
    ]
    assert [x for x in labels if x[0] == "weight_gain"] == [
        ("weight_gain", "+1.5 kg in 48 h", False),
        ("weight_gain", "+2.5 kg in 48 h", False),
        ("weight_gain", "+2 kg in 72 h", True),
    ]
    assert plan.longest_window == timedelta(hours=72)


def test_ingests_own_rules_file_is_a_replay_file(tmp_path):
    path = tmp_path / "ingest.toml"
    path.write_text(
        '[thresholds.fever]\nmetric = "body_temperature"\nop = ">="\nthreshold = 37.5\n'
        "[weight_gain]\ngain_kg = 2.0\nwindow_hours = 72\n"
    )
    plan = load_plan(path, DEFAULT_RULES)
    fever = [(s.label, s.current) for s in plan.settings if s.rule_id == "fever"]
    assert fever == [(">= 37.5", False), (">= 38", True)]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[thresholds.fever\n", "not TOML"),
        ("[tresholds.fever]\nthreshold = 1\n", "tresholds: unknown table"),
        ("[thresholds.fever]\ntreshold = 37\n", "thresholds.fever.treshold: unknown key"),
        (
            '[thresholds.fever]\nthreshold = "high"\n',
            "thresholds.fever.threshold: 'high' is not a number",
        ),
        ("[thresholds.fever]\nthreshold = []\n", "thresholds.fever.threshold: an empty list"),
        ("[thresholds.fever]\nthreshold = [37, 37.0]\n", "37 is given twice"),
        ("[thresholds.fever]\nthreshold = true\n", "True is not a number"),
        ("[thresholds.fever]\nthreshold = nan\n", "nan is not a finite number"),
        ("[thresholds.fever]\n", "threshold is missing"),
        (
            '[thresholds.fever]\nop = "<="\nthreshold = 36\n',
            "must be the current rule's (body_temperature >=)",
        ),
        ("[thresholds.new_rule]\nthreshold = 5\n", "thresholds.new_rule: metric is missing"),
        (
            '[thresholds.new_rule]\nmetric = "mood"\nop = ">="\nthreshold = 5\n',
            "unknown metric 'mood'",
        ),
        (
            '[thresholds.new_rule]\nmetric = "spo2"\nop = "<"\nthreshold = 5\n',
            "'<' is not an operator",
        ),
        ("[thresholds.weight_gain]\nthreshold = 5\n", "weight_gain is set in [weight_gain]"),
        ("[weight_gain]\ngain_kg = [0, 2]\n", "weight_gain.gain_kg: 0 is not above 0"),
        ("[weight_gain]\nwindow = 48\n", "weight_gain.window: unknown key"),
        ("thresholds = 3\n", "thresholds: must be tables"),
    ],
)
def test_a_wrong_rules_file_gets_one_line_naming_what_is_wrong(tmp_path, text, complaint):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_plan(path, DEFAULT_RULES)
    message = str(caught.value)
    assert message.startswith(f"alert rules {path}: ")
    assert complaint in message
    assert "\n" not in message
    assert caught.value.exit_status == 2


def test_a_missing_rules_file_and_a_backwards_period():
    with pytest.raises(ConfigurationError, match="No such file"):
        load_plan(Path("/nonexistent/rules.toml"), DEFAULT_RULES)
    with pytest.raises(InvalidInputError, match="--from 2026-02-01 is not before --to 2026-02-01"):
        Period(date(2026, 2, 1), date(2026, 2, 1))


# -- end to end: ingest fills a real store, the replay finds exactly its alerts ---------------


def run_command(argv: list[str], settings_: Settings) -> int:
    """What `ehealthlab` does with the replay's subcommand (cli.main's error handling)."""
    parser = OneLineParser(prog="ehealthlab")
    register(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(args.handler(args, settings_))
    except EhealthlabError as exc:
        print(f"ehealthlab: {exc}", file=sys.stderr)
        return exc.exit_status


class Store:
    """A migrated store with providers, devices, patients and enrolments; readings go in
    through ingest's `store_judged`, which also raises (and stores) the alerts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.patients: dict[str, uuid.UUID] = {}
        self.devices: dict[str, str] = {}
        with psycopg.connect(url, autocommit=True) as conn:

            def organisation(kind: str, name: str, simulated: bool) -> uuid.UUID:
                row = conn.execute(
                    "INSERT INTO organisations (kind, name, simulated) VALUES (%s, %s, %s)"
                    " RETURNING id",
                    (kind, name, simulated),
                ).fetchone()
                assert row is not None
                return row[0]

            inner, centre = (
                conn.execute(
                    "SELECT istat_code FROM municipalities WHERE area = %s"
                    " ORDER BY istat_code LIMIT 1",
                    (area,),
                ).fetchone()[0]
                for area in ("inner", "centre")
            )
            self.municipality = {"inner": inner, "centre": centre}
            for simulated in (False, True):
                suffix = "sim" if simulated else "real"
                startup = organisation("startup", f"startup-{suffix}", simulated)
                provider = organisation("provider", f"provider-{suffix}", simulated)
                for n, area in enumerate(("inner", "centre", "inner")):
                    label = f"{suffix}-{n}"
                    device = f"mon-{label}"
                    conn.execute(
                        "INSERT INTO devices (device_id, organisation_id, device_type, model,"
                        " serial, simulated) VALUES (%s, %s, 'multiparameter_monitor', 'M', %s,"
                        " %s)",
                        (device, startup, device, simulated),
                    )
                    patient = conn.execute(
                        "INSERT INTO patients (organisation_id, identifier_hash, label)"
                        " VALUES (%s, %s, %s) RETURNING id",
                        (provider, label.encode(), label),
                    ).fetchone()[0]
                    # the third patient starts on the period's second day
                    start = "2026-03-20" if n < 2 else "2026-03-29"
                    conn.execute(
                        "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
                        " VALUES (%s, %s, %s, %s)",
                        (patient, device, self.municipality[area], start),
                    )
                    self.patients[label] = patient
                    self.devices[label] = device

    def ingest(self, messages: list[tuple[str, datetime, datetime, list[dict]]]) -> None:
        """(device, received_at, sent_at, readings) messages, stored in order of arrival, a
        few per batch, through ingest's own transaction."""
        messages = sorted(messages, key=lambda m: m[1])
        with psycopg.connect(self.url) as conn:
            writer = ReadingWriter(conn)
            for first in range(0, len(messages), 4):
                judged = []
                for device, received, sent, items in messages[first : first + 4]:
                    payload = orjson.dumps({
                        "schema": "ehl.readings/1",
                        "msg_id": str(uuid.uuid4()),
                        "sent_at": sent.isoformat(),
                        "readings": items,
                    })  # fmt: skip
                    message = ReceivedMessage(
                        f"ehl/v1/devices/{device}/readings", payload, 1, False, 0, received, True
                    )
                    judged.append(judge(message, lambda _: KnownDevice("multiparameter_monitor")))
                store_judged(conn, writer, judged, DEFAULT_RULES)

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, params).fetchall()


UNITS = {
    "bp_systolic": "mm[Hg]",
    "bp_diastolic": "mm[Hg]",
    "heart_rate": "/min",
    "spo2": "%",
    "body_temperature": "Cel",
    "blood_glucose": "mg/dL",
    "body_weight": "kg",
}
# mostly ordinary values, and a few on and around each threshold
DRAWS = {
    "bp_systolic": [125] * 12 + [85, 90, 170, 180, 185, 195],
    "bp_diastolic": [80] * 12 + [105, 110, 115],
    "heart_rate": [72] * 12 + [38, 40, 110, 120, 130],
    "spo2": [97] * 12 + [86, 88, 90, 92],
    "body_temperature": [36.6] * 12 + [37.5, 37.9, 38.0, 38.6],
    "blood_glucose": [110] * 12 + [65, 70, 280, 300, 320],
}


def pilot_messages(seed: int) -> list[tuple[str, datetime, datetime, list[dict]]]:
    """Ten days of every metric for each patient (the period and days around it), values
    around the thresholds, weights drifting up and down; some messages arrive days late (a
    backlog), one device's clock is an hour behind (its times are corrected), and readings
    sit on the midnights around the daylight-saving change."""
    rng = random.Random(seed)
    messages = []
    seqs: dict[str, int] = {}
    first_day = START - timedelta(days=4)
    for label in ("real-0", "real-1", "real-2", "sim-0", "sim-1", "sim-2"):
        device = f"mon-{label}"
        weight = 70.0
        for day in range(10):
            base = first_day + timedelta(days=day)
            moments = [base + timedelta(minutes=rng.randrange(0, 23 * 60)) for _ in range(3)]
            if day == 4:  # the midnights of the change (28 -> 29 March, 29 -> 30 March)
                moments += [utc(2026, 3, 28, 22, 59, 59), utc(2026, 3, 28, 23, 0)]
                moments += [utc(2026, 3, 29, 21, 59, 59), utc(2026, 3, 29, 22, 0)]
            for at in moments:
                weight = round(weight + rng.choice([-1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 2.5, -2.5]), 1)
                items = []
                for metric, values in DRAWS.items():
                    items.append((metric, float(rng.choice(values))))
                items.append(("body_weight", weight))
                readings = []
                for metric, value in items:
                    seqs[device] = seqs.get(device, 0) + 1
                    readings.append({
                        "seq": seqs[device], "metric": metric, "value": value,
                        "unit": UNITS[metric], "at": at.isoformat(),
                    })  # fmt: skip
                delay = timedelta(seconds=rng.randrange(2, 600))
                if rng.random() < 0.15:
                    delay = timedelta(hours=rng.randrange(20, 90))  # a backlog
                received = at + delay
                sent = received
                if label == "real-1" and day % 3 == 0:
                    sent = received - timedelta(hours=1)  # clock behind: corrected
                messages.append((device, received, sent, readings))
    return messages


@pytest.fixture
def store(plain_admin_url: str, migrated_template: str) -> Iterator[Store]:
    with template_copy(plain_admin_url, migrated_template) as database_url:
        yield Store(database_url)


def test_the_replay_of_the_current_rules_reproduces_exactly_the_alerts_ingest_stored(
    store, tmp_path, capsys
):
    store.ingest(pilot_messages(seed=20260329))
    # ingest did raise alerts, of every kind the test means to cover, before and in the period
    rules_stored = {r for (r,) in store.query("SELECT DISTINCT rule FROM alerts")}
    assert {"weight_gain", "bp_systolic_high", "spo2_low", "fever"} <= rules_stored
    assert store.query("SELECT count(*) FROM readings WHERE clock_corrected")[0][0] > 0
    assert store.query("SELECT count(*) FROM alerts WHERE day < %s", PERIOD.start)[0][0] > 0

    stored = {
        (patient, rule, day)
        for patient, rule, day in store.query(
            "SELECT a.patient_id, a.rule, a.day FROM alerts a"
            " JOIN patients p ON p.id = a.patient_id"
            " JOIN organisations o ON o.id = p.organisation_id"
            " WHERE NOT o.simulated AND a.day >= %s AND a.day < %s",
            PERIOD.start,
            PERIOD.end,
        )
    }
    with psycopg.connect(store.url) as conn:
        data = fetch_replay_data(conn, PERIOD, "real", plan_of(DEFAULT_RULES), None)
    result = replay(data, plan_of(DEFAULT_RULES))
    assert result.agrees
    assert result.current_agreement.stored == len(stored) > 0
    assert result.current_total.alerts == len(stored)
    per_rule: dict[str, int] = {}
    for _, rule, _ in stored:
        per_rule[rule] = per_rule.get(rule, 0) + 1
    assert {r.setting.rule_id: r.all.alerts for r in result.results if r.all.alerts} == per_rule
    # enrolled days: two patients the whole period, the third from its second day
    assert (result.everyone.patients, result.everyone.patient_days) == (3, 5 + 5 + 4)

    # the command, with other settings to compare, by area, as JSON
    rules = tmp_path / "replay.toml"
    rules.write_text(
        "[thresholds.bp_systolic_high]\nthreshold = [170, 180, 190]\n"
        "[thresholds.spo2_low]\nthreshold = [88, 92]\n"
        "[weight_gain]\ngain_kg = [1.5, 2.0, 3.0]\n"
    )
    settings_ = Settings(database_url=store.url, state_dir=tmp_path / "no-stack", alert_rules=None)
    argv = ["replay-alerts", "--from", "2026-03-28", "--to", "2026-04-02", "--rules", str(rules)]
    capsys.readouterr()
    assert run_command([*argv, "--by", "area", "--format", "json"], settings_) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["agrees"] is True
    assert document["population"] == "real"
    assert document["current_total"]["stored_alerts"] == len(stored)
    systolic = [s for s in document["settings"] if s["rule"] == "bp_systolic_high"]
    assert [s["threshold"] for s in systolic] == [170, 180, 190]
    assert [s["current"] for s in systolic] == [False, True, False]
    assert systolic[1]["alerts"] == per_rule.get("bp_systolic_high", 0)
    assert systolic[0]["alerts"] >= systolic[1]["alerts"] >= systolic[2]["alerts"]
    gains = [s for s in document["settings"] if s["rule"] == "weight_gain"]
    assert [s["alerts"] for s in gains] == sorted((s["alerts"] for s in gains), reverse=True)
    for entry in document["settings"]:
        groups = entry["groups"].values()
        assert sum(g["alerts"] for g in groups) == entry["alerts"]
        assert sum(g["patients_flagged"] for g in groups) == entry["patients_flagged"]
    assert set(document["groups"]) == {"inner", "centre"}
    assert document["groups"]["inner"]["patient_days"] == 9

    # the simulated population never mixes with the real one, and agrees as well
    assert run_command([*argv, "--population", "simulated", "--format", "json"], settings_) == 0
    simulated = json.loads(capsys.readouterr().out)
    assert simulated["agrees"] is True
    sim_stored = store.query(
        "SELECT count(*) FROM alerts a JOIN patients p ON p.id = a.patient_id"
        " JOIN organisations o ON o.id = p.organisation_id"
        " WHERE o.simulated AND a.day >= %s AND a.day < %s",
        PERIOD.start,
        PERIOD.end,
    )[0][0]
    assert simulated["current_total"]["stored_alerts"] == sim_stored > 0

    # for people: a table, and the verdict
    assert run_command(argv, settings_) == 0
    text = capsys.readouterr().out
    assert ">= 180 (current)" in text
    assert f"reproduces the {len(stored)} alerts ingest stored" in text

    # CSV: a row per setting and one for all current rules
    assert run_command([*argv, "--format", "csv", "--out", str(tmp_path / "r.csv")], settings_) == 0
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("group,rule,setting,current")
    assert len(lines) == 1 + len(document["settings"]) + 1

    # other rules in force than the ones given: said, not hidden
    other = tmp_path / "other.toml"
    other.write_text(
        '[thresholds.fever]\nmetric = "body_temperature"\nop = ">="\nthreshold = 37.5\n'
    )
    assert run_command([*argv[:5], "--current-rules", str(other)], settings_) == 0
    assert "does not reproduce" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--from", "2026-04-02", "--to", "2026-03-28"], "--from 2026-04-02 is not before --to"),
        (["--from", "2026-02-30", "--to", "2026-03-28"], "'2026-02-30' is not a date"),
        (["--from", "2026-03-01", "--to", "2026-03-28", "--population", "all"], "invalid choice"),
        (
            ["--from", "2026-03-01", "--to", "2026-03-28", "--rules", "/nonexistent.toml"],
            "No such file",
        ),
    ],
)
def test_wrong_arguments_get_one_line_and_exit_status_2(argv, complaint, capsys, tmp_path):
    settings_ = Settings(database_url=None, state_dir=tmp_path, alert_rules=None)
    assert run_command(["replay-alerts", *argv], settings_) == 2
    err = capsys.readouterr().err
    assert complaint in err
    assert len(err.strip().splitlines()) == 1
