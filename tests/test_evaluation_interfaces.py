"""`ehealthlab evaluate` and `GET /api/v1/evaluation` over the hand-worked store: the same
document, the operator's only, clear errors."""

from __future__ import annotations

import csv
import io
import json

import psycopg
import pytest

from ehealthlab import cli
from ehealthlab.gateway import admin
from tests.test_evaluation_store import Rows, write_worked_dataset

QUERY = {"from": "2026-03-01", "to": "2026-03-05"}


@pytest.fixture(scope="module")
def tokens(client, settings, database_url) -> dict[str, str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        write_worked_dataset(Rows(conn))
    boot = admin.bootstrap_operator(settings)
    answer = client.post(
        "/api/v1/organisations",
        json={"kind": "startup", "name": "A start-up"},
        headers={"Authorization": f"Bearer {boot['token']}"},
    )
    assert answer.status_code == 201, answer.text
    return {"operator": boot["token"], "startup": answer.json()["token"]}


@pytest.fixture
def as_environment(monkeypatch, database_url, tmp_path):
    monkeypatch.setenv("EHEALTHLAB_DATABASE_URL", database_url)
    monkeypatch.setenv("EHEALTHLAB_STATE_DIR", str(tmp_path / "no-stack"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_operator_reads_the_evaluation_of_a_period_by_area(client, tokens):
    answer = client.get(
        "/api/v1/evaluation", params={**QUERY, "by": "area"}, headers=bearer(tokens["operator"])
    )
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["period"] == {"from": "2026-03-01", "to": "2026-03-05"}
    assert (document["by"], document["population"]) == ("area", "real")
    assert document["all"]["patients_enrolled"] == 2
    assert document["all"]["loss_rate"] == pytest.approx(1 / 9)
    assert set(document["groups"]) == {"inner", "centre"}
    assert set(document["all"]["adherence"]) == {"value", "ci95"}
    assert document["labels"]["inner"] == "Inner areas (SNAI D-F)"


def test_the_simulated_population_is_asked_for_by_name(client, tokens):
    answer = client.get(
        "/api/v1/evaluation",
        params={**QUERY, "population": "simulated"},
        headers=bearer(tokens["operator"]),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["population"] == "simulated"
    assert answer.json()["all"]["patients_enrolled"] == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({**QUERY, "by": "province"}, "by"),
        ({**QUERY, "population": "both"}, "population"),
        ({"from": "2026-03-05", "to": "2026-03-01"}, "to"),
    ],
)
def test_a_bad_question_is_a_422_naming_the_parameter(client, tokens, params, field):
    answer = client.get("/api/v1/evaluation", params=params, headers=bearer(tokens["operator"]))
    assert answer.status_code == 422, answer.text
    assert field in answer.text


def test_only_the_operator_reads_the_evaluation(client, tokens):
    refused = client.get("/api/v1/evaluation", params=QUERY, headers=bearer(tokens["startup"]))
    assert refused.status_code == 403
    assert client.get("/api/v1/evaluation", params=QUERY).status_code == 401


def test_the_command_prints_the_same_document_as_the_api(client, tokens, as_environment, capsys):
    assert cli.main(["evaluate", "--from", "2026-03-01", "--to", "2026-03-05", "--by",
                     "municipality"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    answer = client.get(
        "/api/v1/evaluation",
        params={**QUERY, "by": "municipality"},
        headers=bearer(tokens["operator"]),
    ).json()
    for document in (printed, answer):
        document.pop("computed_at")
    assert printed == answer
    assert set(printed["groups"]) == {"001003", "001272"}


def test_the_command_writes_csv_in_long_form(tokens, as_environment, tmp_path):
    out = tmp_path / "evaluation.csv"
    argv = ["evaluate", "--from", "2026-03-01", "--to", "2026-03-05", "--by", "startup",
            "--format", "csv", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    patients = {r["label"]: r["value"] for r in rows if r["indicator"] == "patients_enrolled"}
    assert patients == {"All municipalities": "2", "CuffCo": "1", "ScaleCo": "1"}
    adherence = next(r for r in rows if r["indicator"] == "adherence" and r["group"] == "all")
    low, value, high = (float(adherence[k]) for k in ("ci95_low", "value", "ci95_high"))
    assert low <= value <= high


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--from", "2026-13-01", "--to", "2026-03-05"], "is not a date"),
        (["--from", "2026-03-05", "--to", "2026-03-01"], "is not after"),
        (["--from", "2026-03-01", "--to", "2026-03-05", "--by", "province"], "invalid choice"),
    ],
)
def test_a_wrong_argument_is_one_line_and_status_2(argv, says, as_environment, capsys):
    with pytest.raises(SystemExit) as stopped:
        status = cli.main(["evaluate", *argv])
        raise SystemExit(status)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert says in error and len(error.splitlines()) == 1, error


def test_publishing_keeps_every_grouping_from_one_snapshot(tokens, as_environment, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM evaluations")
    assert cli.main(["publish-evaluation", "--from", "2026-03-01", "--to", "2026-03-05"]) == 0
    with psycopg.connect(database_url) as conn:
        saved = conn.execute(
            "SELECT grouping, document -> 'all' -> 'patients_enrolled', computed_at"
            " FROM evaluations ORDER BY grouping"
        ).fetchall()
    assert [g for g, _, _ in saved] == sorted(
        ["all", "municipality", "snai_class", "area", "startup", "device_type", "mini_pilot"]
    )
    assert {n for _, n, _ in saved} == {2} and len({t for *_, t in saved}) == 1


def test_evaluate_writes_nothing(tokens, as_environment, database_url, capsys):
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM evaluations").fetchone()
    assert cli.main(["evaluate", "--from", "2026-03-01", "--to", "2026-03-05"]) == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM evaluations").fetchone() == before


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("visits_per_month = -1\n", "visits_per_month"),
        ("road_factor = 'far'\n", "road_factor"),
    ],
)
@pytest.mark.usefixtures("tokens", "as_environment")
def test_a_bad_economics_file_is_one_line_and_status_2(toml, says, monkeypatch, tmp_path, capsys):
    bad = tmp_path / "economics.toml"
    bad.write_text(toml)
    monkeypatch.setenv("EHEALTHLAB_ECONOMICS_FILE", str(bad))
    assert cli.main(["evaluate", "--from", "2026-03-01", "--to", "2026-03-05"]) == 2
    error = capsys.readouterr().err.strip()
    assert says in error and len(error.splitlines()) == 1, error
