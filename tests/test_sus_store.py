"""System Usability Scale responses stored, over a real PostgreSQL and the API of conftest:
`ehealthlab sus import` (all or nothing, populations, bad arguments; both store forms) and SUS
as FHIR (the Questionnaire, QuestionnaireResponses posted, read and searched through /fhir
with the same access rules as the other resources). One module: both kinds of test share
the module's cast and store, and each test stores what it reads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import uuid
from datetime import date
from pathlib import Path

import psycopg
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from gateway_fixtures import bearer
from sus_fixtures import HEADER, NEUTRAL, posted, response_body

from ehealthlab.cli import OneLineParser
from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation import sus_command, sus_store
from ehealthlab.evaluation.sus import STATEMENTS, SusFileError, parse_csv
from ehealthlab.fhir.questionnaires.sus import SUS_URL
from ehealthlab.gateway import admin

# -- the store and the command ----------------------------------------------------------------


@pytest.fixture(scope="module")
def people(client, settings) -> dict[str, str]:
    """Tokens and ids: the operator; start-up `a` and provider `p`, real; start-up `s` and
    provider `sp`, simulated; provider `q`. Patients P (p's, enrolled in 001272 from
    2026-03-01), Q (q's, enrolled in 001003), S (sp's, simulated), N (p's, never enrolled)."""
    boot = admin.bootstrap_operator(settings)
    found = {"operator": boot["token"], "id:operator": boot["organisation_id"]}
    for who, kind, simulated in (
        ("a", "startup", False),
        ("p", "provider", False),
        ("q", "provider", False),
        ("s", "startup", True),
        ("sp", "provider", True),
    ):
        answer = client.post(
            "/api/v1/organisations",
            json={
                "kind": kind,
                "name": f"{kind} {who} {uuid.uuid4().hex[:6]}",
                "simulated": simulated,
            },
            headers=bearer(boot["token"]),
        )
        assert answer.status_code == 201, answer.text
        found[who], found[f"id:{who}"] = answer.json()["token"], answer.json()["id"]
    for patient, provider, startup, municipality in (
        ("P", "p", "a", "001272"),
        ("Q", "q", "a", "001003"),
        ("S", "sp", "s", "001272"),
        ("N", "p", None, None),
    ):
        made = client.post(
            "/api/v1/patients",
            json={"identifier": f"sus-{patient}-{uuid.uuid4().hex[:6]}", "label": patient},
            headers=bearer(found[provider]),
        )
        assert made.status_code == 201, made.text
        found[patient] = made.json()["id"]
        if startup is None:
            continue
        device = client.post(
            "/api/v1/devices",
            json={"type": "weighing_scale", "model": "M-1", "serial": uuid.uuid4().hex[:10]},
            headers=bearer(found[startup]),
        )
        assert device.status_code == 201, device.text
        enrolled = client.post(
            "/api/v1/enrolments",
            json={
                "patient_id": found[patient],
                "device_id": device.json()["device_id"],
                "municipality": municipality,
                "start": "2026-03-01",
                "end": None,
                "care_plan": {"body_weight": 1},
            },
            headers=bearer(found[provider]),
        )
        assert enrolled.status_code == 201, enrolled.text
    return found


def run_sus(settings, *argv: str) -> str:
    """`ehealthlab sus ...` through a parser built with the command's own `register`."""
    parser = OneLineParser(prog="ehealthlab")
    sus_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.handler(args, settings) == 0
    return out.getvalue()


def stored(settings, **where: object) -> list[tuple]:
    condition = " AND ".join(f"{k} = %({k})s" for k in where) or "TRUE"
    with psycopg.connect(settings.require_database_url()) as conn:
        return conn.execute(
            "SELECT answered_on, respondent, patient_id::text, municipality, items::int[],"  # noqa: S608 - the test's own column names
            f" score, simulated, source, organisation_id FROM sus_responses WHERE {condition}"
            " ORDER BY answered_on, created_at",
            where,
        ).fetchall()


def write_csv(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / f"sus-{uuid.uuid4().hex[:6]}.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_a_file_is_imported_whole_each_response_in_its_population(settings, people, tmp_path):
    path = write_csv(
        tmp_path,
        f"2026-01-10,patient,{people['P']},001272,4,2,4,2,4,2,4,2,4,2",
        f"2026-01-11,carer,{people['S']},001272,{NEUTRAL}",
        "2026-01-12,professional,,001003,5,1,5,1,5,1,5,1,5,1",
    )
    said = run_sus(settings, "sus", "import", str(path))
    assert said == f"imported 3 SUS responses from {path} (2 real, 1 simulated)\n"
    rows = stored(settings, source="csv")
    assert [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[8]) for r in rows] == [
        (date(2026, 1, 10), "patient", people["P"], "001272", [4, 2] * 5, 75.0, False, None),
        (date(2026, 1, 11), "carer", people["S"], "001272", [3] * 10, 50.0, True, None),
        (date(2026, 1, 12), "professional", None, "001003", [5, 1] * 5, 100.0, False, None),
    ]
    # --population applies to the responses without a patient; a patient's stays its own
    later = write_csv(
        tmp_path,
        f"2026-01-20,carer,,001003,{NEUTRAL}",
        f"2026-01-20,patient,{people['P']},001272,{NEUTRAL}",
    )
    said = run_sus(settings, "sus", "import", str(later), "--population", "simulated")
    assert said.endswith("(1 real, 1 simulated)\n")
    assert [r[6] for r in stored(settings, answered_on=date(2026, 1, 20))] == [True, False]


def test_a_file_with_any_bad_row_imports_nothing(settings, people, tmp_path):
    before = len(stored(settings))
    ghost = uuid.uuid4()
    path = write_csv(
        tmp_path,
        f"2026-01-13,patient,{people['P']},001272,{NEUTRAL}",  # good, yet not imported
        f"2026-01-13,patient,{ghost},001272,{NEUTRAL}",
        f"2026-01-13,carer,,999999,{NEUTRAL}",
    )
    with pytest.raises(InvalidInputError) as refused:
        run_sus(settings, "sus", "import", str(path))
    message = str(refused.value)
    assert refused.value.exit_status == 2 and "\n" not in message
    assert f"line 3, patient_id: no patient {ghost}" in message
    assert "line 4, municipality: 999999 is no municipality" in message
    assert "nothing imported" in message
    format_error = write_csv(tmp_path, f"2026-01-13,patient,{people['P']},001272,3,3,3")
    with pytest.raises(InvalidInputError, match="line 2: 7 values for 14 columns"):
        run_sus(settings, "sus", "import", str(format_error))
    assert len(stored(settings)) == before


def test_bad_arguments_are_one_line_and_status_2(settings, tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="no such file") as missing:
        run_sus(settings, "sus", "import", str(tmp_path / "absent.csv"))
    assert missing.value.exit_status == 2
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(
        (HEADER + "\n2026-01-13,patient,,001272," + NEUTRAL + " è\n").encode("latin-1")
    )
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        run_sus(settings, "sus", "import", str(latin1))
    with pytest.raises(InvalidInputError, match="is a directory"):
        run_sus(settings, "sus", "import", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        run_sus(settings, "sus", "import", "x.csv", "--population", "imaginary")
    assert exited.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_store_keeps_a_score_with_its_items(settings):
    with (
        psycopg.connect(settings.require_database_url()) as conn,
        pytest.raises(psycopg.errors.CheckViolation),
    ):
        conn.execute(
            "INSERT INTO sus_responses (answered_on, respondent, municipality, items, score,"
            " simulated, source) VALUES ('2026-01-01', 'carer', '001272',"
            " '{3,3,3,3,3,3,3,3,3,3}', 60, false, 'csv')"
        )


def test_register_builds_a_sus_import_subcommand():
    parser = argparse.ArgumentParser()
    sus_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sus", "import", "f.csv"])
    assert (args.file, args.population, args.handler) == (
        Path("f.csv"),
        "real",
        sus_command.run_import,
    )


# -- SUS as FHIR ------------------------------------------------------------------------------

FHIR_JSON = "application/fhir+json"


def fhir_post(client, token: str, body: dict):
    return client.post(
        "/fhir/QuestionnaireResponse",
        content=posted(body),
        headers={**bearer(token), "Content-Type": FHIR_JSON},
    )


def fhir_get(client, token: str, path: str, params=None):
    return client.get(f"/fhir{path}", params=params, headers=bearer(token))


def outcome(answer, status: int) -> list[dict]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == FHIR_JSON
    OperationOutcome.model_validate(answer.json())
    return answer.json()["issue"]


def test_the_sus_questionnaire_is_served_to_every_token(client, people):
    for who in ("a", "p", "operator"):
        answer = fhir_get(client, people[who], "/Questionnaire/sus")
        assert answer.status_code == 200, answer.text
        questionnaire = answer.json()
        Questionnaire.model_validate(questionnaire)
        assert questionnaire["url"] == SUS_URL
    questions = [i for i in questionnaire["item"] if i["type"] == "integer"]
    assert [q["text"] for q in questions] == list(STATEMENTS)
    assert [q["linkId"] for q in questions] == [str(n) for n in range(1, 11)]
    assert {o["valueInteger"] for o in questions[0]["answerOption"]} == {1, 2, 3, 4, 5}
    outcome(fhir_get(client, people["p"], "/Questionnaire/phq-9"), 404)
    outcome(client.get("/fhir/Questionnaire/sus"), 401)


def test_a_provider_posts_its_patients_response_and_reads_it_back(client, people, settings):
    body = response_body(f"Patient/{people['P']}", items=(4, 2) * 5)
    answer = fhir_post(client, people["p"], body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    QuestionnaireResponse.model_validate(created)
    assert answer.headers["location"].endswith(f"/fhir/QuestionnaireResponse/{created['id']}")
    assert created["questionnaire"] == SUS_URL
    assert created["authored"] == "2026-03-05"
    assert created["author"] == {"reference": f"Organization/{people['id:p']}"}
    assert created["source"] == {"reference": f"Patient/{people['P']}"}
    assert created["item"][-1] == {
        "linkId": "score",
        "text": "SUS score, 0 to 100 (computed by the server)",
        "answer": [{"valueDecimal": 75.0}],
    }
    assert created["meta"]["tag"][0]["code"] == "real"
    # stored for the evaluation: the municipality of the enrolment active that day
    [row] = [r for r in stored(settings, source="fhir") if r[2] == people["P"]]
    assert (row[3], row[5], row[6], str(row[8])) == ("001272", 75.0, False, people["id:p"])
    read = fhir_get(client, people["p"], f"/QuestionnaireResponse/{created['id']}")
    assert read.status_code == 200 and read.json() == created
    assert (
        fhir_get(client, people["operator"], f"/QuestionnaireResponse/{created['id']}").json()
        == created
    )
    # another provider does not see it; a start-up reads no responses at all
    outcome(fhir_get(client, people["q"], f"/QuestionnaireResponse/{created['id']}"), 404)
    outcome(fhir_get(client, people["a"], f"/QuestionnaireResponse/{created['id']}"), 403)


def test_searches_by_patient_authored_and_questionnaire_see_only_ones_own(
    client, people, settings, tmp_path
):
    for day, items in (("2026-04-01", (5, 1) * 5), ("2026-04-15", (3,) * 10)):
        body = response_body(f"Patient/{people['Q']}", items=items, authored=day)
        assert fhir_post(client, people["q"], body).status_code == 201
    search = {"patient": people["Q"]}
    bundle = fhir_get(client, people["q"], "/QuestionnaireResponse", search).json()
    Bundle.model_validate(bundle)
    assert bundle["total"] == 2
    scores = sorted(e["resource"]["item"][-1]["answer"][0]["valueDecimal"] for e in bundle["entry"])
    assert scores == [50.0, 100.0]
    for params, total in (
        ({"patient": people["Q"], "authored": "2026-04-01"}, 1),
        ({"patient": people["Q"], "authored": "ge2026-04-02"}, 1),
        ({"patient": people["Q"], "authored": "2026-04"}, 2),
        ({"patient": people["Q"], "authored": "lt2026-04-01"}, 0),
        ({"subject": f"Patient/{people['Q']}", "questionnaire": SUS_URL}, 2),
        ({"patient": people["Q"], "questionnaire": "Questionnaire/sus"}, 2),
        ({"patient": people["Q"], "questionnaire": "http://example.org/Questionnaire/x"}, 0),
    ):
        found = fhir_get(client, people["q"], "/QuestionnaireResponse", params).json()
        assert found["total"] == total, (params, found)
    # p sees none of Q's; the operator sees them; paging walks them
    assert fhir_get(client, people["p"], "/QuestionnaireResponse", search).json()["total"] == 0
    first = fhir_get(
        client, people["operator"], "/QuestionnaireResponse", {**search, "_count": "1"}
    ).json()
    assert len(first["entry"]) == 1
    next_url = {link["relation"]: link["url"] for link in first["link"]}["next"]
    following = client.get(next_url, headers=bearer(people["operator"])).json()
    assert (
        len(following["entry"]) == 1
        and following["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]
    )
    # responses imported without a patient are about their municipality: the operator's
    run_sus(settings, "sus", "import",
            str(write_csv(tmp_path, f"2026-04-20,professional,,001003,{NEUTRAL}")))  # fmt: skip
    about_place = fhir_get(
        client, people["operator"], "/QuestionnaireResponse", {"subject": "Location/001003"}
    ).json()
    assert about_place["total"] >= 1
    assert all(
        e["resource"]["subject"] == {"reference": "Location/001003"} for e in about_place["entry"]
    )
    assert (
        fhir_get(
            client, people["p"], "/QuestionnaireResponse", {"subject": "Location/001003"}
        ).json()["total"]
        == 0
    )


def test_who_may_post_about_whom(client, people, settings):
    issues = outcome(fhir_post(client, people["p"], response_body(f"Patient/{people['Q']}")), 422)
    assert "not a patient of yours" in issues[0]["diagnostics"]
    issues = outcome(fhir_post(client, people["p"], response_body(f"Patient/{uuid.uuid4()}")), 422)
    assert "not a patient of yours" in issues[0]["diagnostics"]
    issues = outcome(
        fhir_post(
            client, people["p"], response_body("Location/001272", source={"type": "Practitioner"})
        ),
        422,
    )
    assert "its own patients" in issues[0]["diagnostics"]
    issues = outcome(fhir_post(client, people["p"], response_body(f"Patient/{people['N']}")), 422)
    assert "no enrolment active on 2026-03-05" in issues[0]["diagnostics"]
    outcome(fhir_post(client, people["a"], response_body(f"Patient/{people['P']}")), 403)
    outcome(client.post("/fhir/QuestionnaireResponse", content=b"{}"), 401)
    # the operator may post about any patient, or about a municipality
    assert (
        fhir_post(client, people["operator"], response_body(f"Patient/{people['S']}")).status_code
        == 201
    )
    by_operator = fhir_post(
        client,
        people["operator"],
        response_body("Location/001003", source={"type": "Practitioner"}, authored="2026-03-09"),
    )
    assert by_operator.status_code == 201, by_operator.text
    assert by_operator.json()["source"] == {
        "type": "Practitioner",
        "display": "health professional",
    }
    issues = outcome(
        fhir_post(
            client,
            people["operator"],
            response_body("Location/999999", source={"type": "Practitioner"}),
        ),
        422,
    )
    assert "no municipality" in issues[0]["diagnostics"]
    rows = stored(settings, source="fhir")
    simulated = {r[2]: r[6] for r in rows if r[2] is not None}
    assert simulated[people["S"]] is True  # a simulated provider's patient
    assert any(r[2] is None and r[3] == "001003" and r[6] is False for r in rows)


def test_bad_responses_are_operation_outcomes_naming_the_item(client, people):
    body = response_body(f"Patient/{people['P']}", items=(3, 3, 3, 3, 9, 3, 3, 3, 3, 3))
    issues = outcome(fhir_post(client, people["p"], body), 422)
    assert issues[0]["code"] == "business-rule"
    assert issues[0]["expression"] == ["QuestionnaireResponse.item[4].answer"]
    assert issues[0]["diagnostics"].startswith("item 5:")
    invalid = outcome(fhir_post(client, people["p"], {**body, "status": ["completed"]}), 400)
    assert any("status" in issue["expression"][0] for issue in invalid)
    outcome(fhir_post(client, people["p"], {"resourceType": "Observation"}), 400)
    wrong_type = client.post(
        "/fhir/QuestionnaireResponse",
        content=b"<xml/>",
        headers={**bearer(people["p"]), "Content-Type": "application/xml"},
    )
    outcome(wrong_type, 415)


def test_the_capability_statement_declares_sus(client):
    statement = client.get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    response = resources["QuestionnaireResponse"]
    assert [i["code"] for i in response["interaction"]] == ["read", "search-type", "create"]
    assert {p["name"] for p in response["searchParam"]} == {
        "_id",
        "patient",
        "subject",
        "authored",
        "questionnaire",
    }
    assert [i["code"] for i in resources["Questionnaire"]["interaction"]] == ["read"]


def test_both_store_forms_keep_responses_all_or_nothing(store_url):
    """Migration 0018 is one file for both physical forms; the import works on each."""
    with psycopg.connect(store_url) as conn:
        provider = conn.execute(
            "INSERT INTO organisations (kind, name, simulated) VALUES ('provider', 'p', true)"
            " RETURNING id"
        ).fetchone()[0]
        patient = conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, 'x', 'P') RETURNING id",
            (provider,),
        ).fetchone()[0]
        conn.commit()
        text = (
            f"{HEADER}\n2026-01-02,patient,{patient},001272,{NEUTRAL}\n"
            f"2026-01-02,carer,,001003,{NEUTRAL}\n"
        )
        report = sus_store.import_responses(conn, parse_csv(text))
        assert (report.real, report.simulated) == (1, 1)
        bad = f"{HEADER}\n2026-01-03,carer,,001003,{NEUTRAL}\n2026-01-03,carer,,999999,{NEUTRAL}\n"
        with pytest.raises(SusFileError, match="line 3, municipality"):
            sus_store.import_responses(conn, parse_csv(bad))
        rows = conn.execute("SELECT answered_on, simulated FROM sus_responses ORDER BY simulated")
        assert rows.fetchall() == [(date(2026, 1, 2), False), (date(2026, 1, 2), True)]
