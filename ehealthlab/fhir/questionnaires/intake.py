"""A posted QuestionnaireResponse read into a SUS response to store. Pure.

First the resource must be a valid FHIR R4 QuestionnaireResponse (fhir.resources' R4B model):
if not, 400. Then it must answer the SUS Questionnaire (questionnaire.py's canonical, with or
without `|version`), be `completed`, say when (`authored`: a day, or a time with a zone,
whose Europe/Rome day is kept), about whom (`subject`: Patient/{id}, or Location/{ISTAT
code} for a response about no patient) and who answered (`source`, see sus.py; absent: the
patient who is the subject), and answer each of the ten statements (linkIds 1 to 10) with
one `valueInteger` from 1 to 5. A `score` item, if sent, must be the score of the answers.
Every such problem is named at once, each with the FHIRPath of the element (and the item's
linkId): 422. Who may post about whom is the route's to check (routes.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

import orjson
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from pydantic import ValidationError

from ehealthlab.contract.pilot_time import pilot_day
from ehealthlab.errors import InvalidInputError
from ehealthlab.evaluation.sus import HIGHEST, LOWEST, Respondent, sus_score
from ehealthlab.fhir.questionnaires.sus import (
    INSTRUCTIONS_LINK_ID,
    ITEM_LINK_IDS,
    SCORE_LINK_ID,
    SOURCE_TYPES,
    SUS_URL,
)

_REFERENCE = re.compile(r"(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
_ISTAT = re.compile(r"[0-9]{6}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RESPONDENT_BY_TYPE: dict[str, Respondent] = {
    "Patient": "patient",
    "RelatedPerson": "carer",
    "Practitioner": "professional",
    "PractitionerRole": "professional",
}


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: where (a FHIRPath expression) and what."""

    expression: str
    diagnostics: str


class IntakeError(InvalidInputError):
    """A posted QuestionnaireResponse that cannot be stored: 400 when it is not a valid
    QuestionnaireResponse at all, 422 when it is one but not an acceptable SUS response."""

    def __init__(self, status: int, issues: list[Issue]) -> None:
        self.status = status
        self.issues = issues
        super().__init__("; ".join(f"{i.expression}: {i.diagnostics}" for i in issues))


@dataclass(frozen=True, slots=True)
class Submission:
    """A SUS response as posted: about a patient or (patient None) a municipality."""

    answered_on: date
    respondent: Respondent
    patient_id: UUID | None
    municipality: str | None
    items: tuple[int, ...]

    @property
    def subject(self) -> str:
        return f"Patient/{self.patient_id}" if self.patient_id else f"Location/{self.municipality}"


def read_submission(body: bytes) -> Submission:
    """The SUS response a request body holds, or IntakeError naming every problem."""
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IntakeError(400, [Issue("QuestionnaireResponse", f"not JSON: {exc}")]) from None
    if type(resource) is not dict or resource.get("resourceType") != "QuestionnaireResponse":
        raise IntakeError(
            400, [Issue("QuestionnaireResponse", "POST a QuestionnaireResponse resource here")]
        )
    _validate(resource)
    issues: list[Issue] = []
    questionnaire = resource.get("questionnaire")
    if not isinstance(questionnaire, str) or questionnaire.split("|")[0] != SUS_URL:
        issues.append(
            Issue(
                "QuestionnaireResponse.questionnaire",
                f"answer the SUS Questionnaire: give its canonical URL {SUS_URL}",
            )
        )
    if resource.get("status") != "completed":
        issues.append(
            Issue(
                "QuestionnaireResponse.status",
                "only completed responses are taken (every statement answered)",
            )
        )
    answered_on = _answered_on(resource.get("authored"), issues)
    patient_id, municipality = _subject(resource.get("subject"), issues)
    respondent = _respondent(resource.get("source"), patient_id, issues)
    items = _items(resource.get("item"), issues)
    if issues or answered_on is None or respondent is None or items is None:
        raise IntakeError(422, issues)
    return Submission(answered_on, respondent, patient_id, municipality, items)


def _validate(resource: dict[str, Any]) -> None:
    try:
        QuestionnaireResponse.model_validate(resource)
    except ValidationError as exc:
        issues = [
            Issue(
                ".".join(["QuestionnaireResponse", *(str(p) for p in error["loc"])]),
                str(error["msg"]),
            )
            for error in exc.errors(include_input=False, include_url=False)[:20]
        ]
        raise IntakeError(400, issues) from None
    except (ValueError, TypeError) as exc:  # a validator of the library failing otherwise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntakeError(400, [Issue("QuestionnaireResponse", message)]) from None


def _answered_on(authored: object, issues: list[Issue]) -> date | None:
    where = "QuestionnaireResponse.authored"
    if not isinstance(authored, str):
        issues.append(Issue(where, "say when it was answered: a date, or a time with a zone"))
        return None
    if _DAY.fullmatch(authored):
        return date.fromisoformat(authored)
    if "T" in authored:
        try:
            moment = datetime.fromisoformat(authored.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return pilot_day(moment)
    issues.append(Issue(where, f"{authored[:40]!r} is not a day (YYYY-MM-DD) or a zoned time"))
    return None


def _reference(value: object) -> tuple[str, str] | None:
    if type(value) is not dict or not isinstance(value.get("reference"), str):
        return None
    match = _REFERENCE.fullmatch(value["reference"])
    return None if match is None else (match["type"], match["id"])


def _subject(subject: object, issues: list[Issue]) -> tuple[UUID | None, str | None]:
    where = "QuestionnaireResponse.subject"
    reference = _reference(subject)
    if reference is not None and reference[0] == "Patient":
        try:
            return UUID(reference[1]), None
        except ValueError:
            issues.append(Issue(where, f"Patient/{reference[1]} is no patient of this server"))
            return None, None
    if reference is not None and reference[0] == "Location":
        if _ISTAT.fullmatch(reference[1]):
            return None, reference[1]
        issues.append(Issue(where, f"Location/{reference[1]} is no municipality (ISTAT code)"))
        return None, None
    issues.append(
        Issue(
            where,
            "say whom the response is about: Patient/{id}, or Location/{ISTAT code} for a "
            "response about no patient",
        )
    )
    return None, None


def _respondent(source: object, patient: UUID | None, issues: list[Issue]) -> Respondent | None:
    where = "QuestionnaireResponse.source"
    if source is None:
        if patient is not None:
            return "patient"
        issues.append(
            Issue(where, "say who answered: Patient, RelatedPerson (a carer) or Practitioner")
        )
        return None
    reference = _reference(source)
    kind = reference[0] if reference is not None else None
    if kind is None and type(source) is dict and isinstance(source.get("type"), str):
        kind = source["type"]
    respondent = _RESPONDENT_BY_TYPE.get(kind or "")
    if respondent is None:
        types = ", ".join(["Patient", *SOURCE_TYPES.values(), "PractitionerRole"])
        issues.append(Issue(where, f"who answered is one of {types}, by reference or type"))
        return None
    if respondent == "patient" and reference is not None and reference[1] != str(patient):
        issues.append(Issue(where, "a patient answering is the patient the response is about"))
        return None
    return respondent


def _items(items: object, issues: list[Issue]) -> tuple[int, ...] | None:
    answers: dict[str, int] = {}
    score: tuple[int, object] | None = None
    found_issue = len(issues)
    for index, item in enumerate(items if isinstance(items, list) else []):
        where = f"QuestionnaireResponse.item[{index}]"
        link_id = item.get("linkId") if type(item) is dict else None
        if item.get("item") if type(item) is dict else False:
            issues.append(Issue(where, f"item {link_id}: the SUS has no nested items"))
            continue
        given = item.get("answer") if type(item) is dict else None
        given = given if isinstance(given, list) else []
        if link_id == INSTRUCTIONS_LINK_ID and not given:
            continue
        if link_id == SCORE_LINK_ID:
            score = (index, given[0].get("valueDecimal") if len(given) == 1 else None)
            continue
        if link_id not in ITEM_LINK_IDS:
            issues.append(Issue(f"{where}.linkId", f"{str(link_id)[:20]!r} is no item of the SUS"))
            continue
        if link_id in answers:
            issues.append(Issue(f"{where}.linkId", f"item {link_id} is answered twice"))
            continue
        value = given[0].get("valueInteger") if len(given) == 1 else None
        if type(value) is not int or not LOWEST <= value <= HIGHEST:
            issues.append(
                Issue(
                    f"{where}.answer",
                    f"item {link_id}: answer with one valueInteger from {LOWEST} "
                    f"(strongly disagree) to {HIGHEST} (strongly agree)",
                )
            )
            answers[link_id] = 0
            continue
        answers[link_id] = value
    missing = [link_id for link_id in ITEM_LINK_IDS if link_id not in answers]
    if missing:
        issues.append(
            Issue("QuestionnaireResponse.item", f"item {', '.join(missing)} not answered")
        )
    if len(issues) > found_issue:
        return None
    values = tuple(answers[link_id] for link_id in ITEM_LINK_IDS)
    if score is not None and score[1] != sus_score(values):
        issues.append(
            Issue(
                f"QuestionnaireResponse.item[{score[0]}].answer",
                f"item score: the answers score {sus_score(values)}; leave the score out or "
                "send that",
            )
        )
        return None
    return values
