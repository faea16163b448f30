"""System Usability Scale responses: the score and the CSV file (pure, table-driven and
generated), `ehealthlab sus import` over a real PostgreSQL (all or nothing, populations), and
SUS as FHIR (the Questionnaire, QuestionnaireResponses posted, read and searched through
/fhir with the same access rules as the other resources) over the API of conftest.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import uuid
from datetime import date
from pathlib import Path

import orjson
import psycopg
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from gateway_fixtures import bearer
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.cli import OneLineParser
from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation import sus_command, sus_store
from ehealthlab.evaluation.sus import STATEMENTS, SusFileError, parse_csv, sus_score
from ehealthlab.fhir.questionnaires.intake import IntakeError, read_submission
from ehealthlab.fhir.questionnaires.sus import SUS_URL
from ehealthlab.gateway import admin

HEADER = "answered_on,respondent,patient_id,municipality," + ",".join(
    f"item{n}" for n in range(1, 11)
)
NEUTRAL = ",".join(["3"] * 10)

# -- pure: the score --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "score"),
    [
        ((3,) * 10, 50.0),  # all neutral
        ((5, 1) * 5, 100.0),  # agrees with every positive, disagrees with every negative
        ((1, 5) * 5, 0.0),
        ((5,) * 10, 50.0),  # agreeing with everything is neutral
        ((1,) * 10, 50.0),
        ((4, 2) * 5, 75.0),
        ((4, 2, 4, 2, 4, 2, 4, 2, 4, 1), 77.5),
        ((2, 4) * 5, 25.0),
    ],
)
def test_scores(items, score):
    assert sus_score(items) == score


@pytest.mark.parametrize(
    "items",
    [(3,) * 9, (3,) * 11, (0,) + (3,) * 9, (6,) + (3,) * 9, ("3",) * 10, (3.0,) * 10, (True,) * 10],
)
def test_what_is_no_response(items):
    with pytest.raises(ValueError, match="SUS"):
        sus_score(items)


@given(st.lists(st.integers(1, 5), min_size=10, max_size=10))
def test_any_response_scores_0_to_100_in_steps_of_2_5(items):
    score = sus_score(items)
    assert 0 <= score <= 100
    assert (score / 2.5).is_integer()
    # answering the opposite of every statement mirrors the score around 50
    assert sus_score([6 - item for item in items]) == 100 - score


# -- pure: the CSV file -------------------------------------------------------------------------


def test_a_good_file_in_either_delimiter_and_with_or_without_patients():
    patient = uuid.uuid4()
    text = (
        f"\ufeff{HEADER}\n2026-03-02,patient,{patient},001272,{NEUTRAL}\n"
        "\n"  # blank lines are skipped
        "2026-03-03,carer,,001003,5,1,5,1,5,1,5,1,5,1\n"
    )
    first, second = parse_csv(text)
    assert (first.answered_on, first.respondent, first.patient_id) == (
        date(2026, 3, 2),
        "patient",
        patient,
    )
    assert (first.municipality, first.score, first.line) == ("001272", 50.0, 2)
    assert (second.patient_id, second.score, second.line) == (None, 100.0, 4)
    semicolons = text.replace(",", ";")
    assert parse_csv(semicolons) == [first, second]
    # patient_id may be left out altogether, columns in any order
    items = ",".join(f"item{n}" for n in range(10, 0, -1))
    reordered = (
        f"municipality,{items},respondent,answered_on\n"
        "001272,1,2,3,4,5,1,2,3,4,5,professional,2026-03-04\n"
    )
    [only] = parse_csv(reordered)
    assert only.items == (5, 4, 3, 2, 1, 5, 4, 3, 2, 1) and only.respondent == "professional"


def test_every_problem_of_a_file_is_named_by_line_and_column():
    text = (
        f"{HEADER}\n"
        f"2026-03-02,patient,,001272,{NEUTRAL}\n"  # good
        f"2026-02-30,nurse,not-a-uuid,1272,{NEUTRAL}\n"
        "2026-03-02,carer,,001272,3,3,3,6,3,,3,3,3,x\n"
        f"2026-03-02,carer,,001272,{NEUTRAL},3\n"
    )
    with pytest.raises(SusFileError) as refused:
        parse_csv(text, source="sus.csv")
    found = {(p.line, p.column) for p in refused.value.problems}
    assert found == {
        (3, "answered_on"),
        (3, "respondent"),
        (3, "patient_id"),
        (3, "municipality"),
        (4, "item4"),
        (4, "item6"),
        (4, "item10"),
        (5, ""),
    }
    message = str(refused.value)
    assert "\n" not in message and message.startswith("sus.csv: 8 problems, nothing imported: ")
    assert "line 4, item6: an empty value is not an answer from 1 to 5" in message
    assert refused.value.exit_status == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file: it is empty"),
        ("answered_on,respondent\n", "line 1, municipality: the column is missing"),
        (HEADER + ",colour\n", "line 1, colour: is not a column of a SUS file"),
        (HEADER + ",item1\n", "line 1, item1: appears twice"),
        (HEADER + "\n", "the file: it has a header but no responses"),
        (HEADER + '\n"2026-03-02,patient', "line 2: not CSV"),
    ],
)
def test_files_that_are_not_sus_files(text, problem):
    with pytest.raises(SusFileError) as refused:
        parse_csv(text)
    assert problem in str(refused.value)


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_cleanly(text):
    with contextlib.suppress(SusFileError):
        for response in parse_csv(text):
            assert 0 <= response.score <= 100


# -- pure: a posted QuestionnaireResponse -------------------------------------------------------


def response_body(subject: str, items=(3,) * 10, **overrides) -> dict:
    body = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": SUS_URL,
        "status": "completed",
        "subject": {"reference": subject},
        "authored": "2026-03-05T10:00:00+01:00",
        "item": [
            {"linkId": str(n), "answer": [{"valueInteger": value}]}
            for n, value in enumerate(items, start=1)
        ],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def posted(body: dict) -> bytes:
    return orjson.dumps(body)


def test_a_posted_response_is_read_and_its_day_is_romes():
    patient = uuid.uuid4()
    late = response_body(f"Patient/{patient}", authored="2026-03-05T23:30:00Z")
    read = read_submission(posted(late))
    assert read.answered_on == date(2026, 3, 6)  # 00:30 in Rome
    assert (read.respondent, read.patient_id, read.items) == ("patient", patient, (3,) * 10)
    carer = response_body(
        "Location/001272",
        authored="2026-03-05",
        source={"type": "RelatedPerson", "display": "a daughter"},
    )
    read = read_submission(posted(carer))
    assert (read.respondent, read.municipality, read.answered_on) == (
        "carer",
        "001272",
        date(2026, 3, 5),
    )


@pytest.mark.parametrize(
    ("change", "status", "mentions"),
    [
        ({"status": 5}, 400, "status"),
        ({"authored": "yesterday"}, 400, "authored"),
        ({"colour": "red"}, 400, "colour"),
        ({"status": "bogus"}, 422, "completed"),
        ({"item": "not a list"}, 400, "item"),
        ({"questionnaire": "http://example.org/Questionnaire/phq-9"}, 422, "SUS Questionnaire"),
        ({"status": "in-progress"}, 422, "completed"),
        ({"authored": "2026-03"}, 422, "authored"),
        ({"authored": None}, 422, "authored"),
        ({"subject": {"reference": "Device/bpm-1"}}, 422, "subject"),
        ({"source": {"reference": "Organization/x"}}, 422, "source"),
        ({"source": {"reference": f"Patient/{uuid.uuid4()}"}}, 422, "source"),
    ],
)
def test_a_posted_response_that_cannot_be_taken(change, status, mentions):
    body = {**response_body(f"Patient/{uuid.uuid4()}"), **change}
    with pytest.raises(IntakeError) as refused:
        read_submission(posted({k: v for k, v in body.items() if v is not None}))
    assert refused.value.status == status
    assert any(mentions in f"{i.expression} {i.diagnostics}" for i in refused.value.issues)


def test_every_bad_item_is_named():
    body = response_body(f"Patient/{uuid.uuid4()}", items=(3, 6, 3, 0, 3, 3, 3, 3, 3))
    body["item"].append({"linkId": "11", "answer": [{"valueInteger": 3}]})
    body["item"].append({"linkId": "1", "answer": [{"valueInteger": 3}]})
    body["item"].append({"linkId": "score", "answer": [{"valueDecimal": 99}]})
    with pytest.raises(IntakeError) as refused:
        read_submission(posted(body))
    said = [f"{i.expression}: {i.diagnostics}" for i in refused.value.issues]
    assert refused.value.status == 422
    assert any("item[1].answer: item 2:" in s for s in said)
    assert any("item[3].answer: item 4:" in s for s in said)
    assert any("'11' is no item" in s for s in said)
    assert any("item 1 is answered twice" in s for s in said)
    assert any("item 10 not answered" in s for s in said)
    right = response_body(f"Patient/{uuid.uuid4()}", items=(4, 2) * 5)
    right["item"].append({"linkId": "score", "answer": [{"valueDecimal": 75}]})
    assert read_submission(posted(right)).items == (4, 2) * 5
    right["item"][-1] = {"linkId": "score", "answer": [{"valueDecimal": 70}]}
    with pytest.raises(IntakeError, match=r"answers score 75\.0"):
        read_submission(posted(right))


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


def test_searches_by_patient_authored_and_questionnaire_see_only_ones_own(client, people):
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
