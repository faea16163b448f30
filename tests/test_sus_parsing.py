"""System Usability Scale responses, pure: the score (table-driven and generated), the CSV
file (either delimiter, every problem named by line and column, any text parsed or refused
cleanly), and a posted QuestionnaireResponse read or refused item by item."""

from __future__ import annotations

import contextlib
import uuid
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sus_fixtures import HEADER, NEUTRAL, posted, response_body

from ehealthlab.evaluation.sus import SusFileError, parse_csv, sus_score
from ehealthlab.fhir.questionnaires.intake import IntakeError, read_submission

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
