"""The SUS Questionnaire (`GET /fhir/Questionnaire/sus`) and a stored SUS response as a
QuestionnaireResponse. Pure; JSON dicts, which tests validate with fhir.resources' R4B models.

The Questionnaire has the ten statements of the System Usability Scale in their standard
English wording (Brooke 1996), linkIds `1` to `10`, each an `integer` item answered with one
of the answerOptions 1 (strongly disagree) to 5 (strongly agree); a read-only `score` item
(decimal) carries the score the server computes. A QuestionnaireResponse is about a Patient
(`subject`) or, imported without a patient, about the municipality it counts in
(`subject` = `Location/{ISTAT code}`: QuestionnaireResponse.subject may be any resource); who
answered is its `source`: the Patient, a RelatedPerson (a carer) or a Practitioner (a health
professional). Its `authored` is the day it was answered (the store keeps the day), its
`author` the organisation that posted it, and `meta.tag` its population (real or simulated,
simulated also labelled HTEST).
"""

# the score's formula is printed for people, with the spec's mathematical signs
# ruff: noqa: RUF001

from __future__ import annotations

from functools import cache
from typing import Any

from ehealthlab.evaluation.sus import ANSWERS, HIGHEST, ITEM_COUNT, LOWEST, STATEMENTS
from ehealthlab.fhir.mapping.codes import FHIR_BASE, POPULATION_CODES, TEST_HEALTH_DATA, Code
from ehealthlab.fhir.mapping.rows import SusResponseRecord

Json = dict[str, Any]

SUS_ID = "sus"
SUS_URL = f"{FHIR_BASE}/Questionnaire/{SUS_ID}"
SUS_VERSION = "1.0"
#: linkIds of the ten statements
ITEM_LINK_IDS = tuple(str(n) for n in range(1, ITEM_COUNT + 1))
#: linkId of the computed score
SCORE_LINK_ID = "score"
INSTRUCTIONS_LINK_ID = "instructions"
INSTRUCTIONS = (
    "For each statement, answer from 1 (strongly disagree) to 5 (strongly agree). "
    "Answer every statement; if you cannot, answer 3."
)
SCORE_TEXT = "SUS score, 0 to 100 (computed by the server)"
#: QuestionnaireResponse extension (valueReference to a Location): the municipality a
#: patient's response counts in when the evaluation groups by municipality
RESPONSE_MUNICIPALITY_EXTENSION = f"{FHIR_BASE}/StructureDefinition/sus-municipality"
#: when this Questionnaire last changed
QUESTIONNAIRE_DATE = "2026-12-01"

#: QuestionnaireResponse.source by respondent: (resource type, display) for those the
#: platform keeps no resource of
SOURCE_TYPES = {"carer": "RelatedPerson", "professional": "Practitioner"}
SOURCE_DISPLAYS = {"carer": "carer", "professional": "health professional"}


@cache
def questionnaire_json() -> Json:
    """The SUS Questionnaire (shared: treat as read-only)."""
    items: list[Json] = [{"linkId": INSTRUCTIONS_LINK_ID, "text": INSTRUCTIONS, "type": "display"}]
    for link_id, statement in zip(ITEM_LINK_IDS, STATEMENTS, strict=True):
        items.append(
            {
                "linkId": link_id,
                "prefix": f"{link_id}.",
                "text": statement,
                "type": "integer",
                "required": True,
                "repeats": False,
                "answerOption": [{"valueInteger": value} for value in range(LOWEST, HIGHEST + 1)],
            }
        )
    items.append(
        {
            "linkId": SCORE_LINK_ID,
            "text": SCORE_TEXT,
            "type": "decimal",
            "required": False,
            "repeats": False,
            "readOnly": True,
        }
    )
    scale = "; ".join(f"{n} {label.lower()}" for n, label in enumerate(ANSWERS, start=LOWEST))
    return {
        "resourceType": "Questionnaire",
        "id": SUS_ID,
        "url": SUS_URL,
        "version": SUS_VERSION,
        "name": "SystemUsabilityScale",
        "title": "System Usability Scale (SUS)",
        "status": "active",
        "experimental": False,
        "subjectType": ["Patient", "Location"],
        "date": QUESTIONNAIRE_DATE,
        "publisher": "Città Metropolitana di Torino",
        "description": "The System Usability Scale (J. Brooke, 1996): ten statements about the "
        f"telemonitoring service, each answered {scale}. A response scores 2.5 × (Σ(odd item "
        "− 1) + Σ(5 − even item)), from 0 to 100; the pilot's indicator sus_mean is the mean "
        "score over the responses of a period (indicators.md).",
        "purpose": "The user and public-sector response to the E-health Territorial LAB "
        "pilot, from patients, carers and health professionals.",
        "item": items,
    }


def population_meta(simulated: bool) -> Json:
    """meta of published data: its population as a tag, simulated data labelled HTEST."""
    meta: Json = {"tag": [_coding(POPULATION_CODES["simulated" if simulated else "real"])]}
    if simulated:
        meta["security"] = [_coding(TEST_HEALTH_DATA)]
    return meta


def questionnaire_response_json(record: SusResponseRecord) -> Json:
    """A stored SUS response as a QuestionnaireResponse."""
    resource: Json = {
        "resourceType": "QuestionnaireResponse",
        "id": str(record.id),
        "meta": population_meta(record.simulated),
    }
    location = {"reference": f"Location/{record.municipality}"}
    if record.patient_id is not None:
        resource["extension"] = [
            {"url": RESPONSE_MUNICIPALITY_EXTENSION, "valueReference": location}
        ]
    resource["questionnaire"] = SUS_URL
    resource["status"] = "completed"
    patient = None if record.patient_id is None else {"reference": f"Patient/{record.patient_id}"}
    resource["subject"] = patient or location
    resource["authored"] = record.answered_on.isoformat()
    if record.organisation_id is not None:
        resource["author"] = {"reference": f"Organization/{record.organisation_id}"}
    if record.respondent == "patient":
        resource["source"] = patient or {"type": "Patient", "display": "patient"}
    else:
        resource["source"] = {
            "type": SOURCE_TYPES[record.respondent],
            "display": SOURCE_DISPLAYS[record.respondent],
        }
    items: list[Json] = [
        {"linkId": link_id, "text": statement, "answer": [{"valueInteger": int(value)}]}
        for link_id, statement, value in zip(ITEM_LINK_IDS, STATEMENTS, record.items, strict=True)
    ]
    items.append(
        {"linkId": SCORE_LINK_ID, "text": SCORE_TEXT, "answer": [{"valueDecimal": record.score}]}
    )
    resource["item"] = items
    return resource


def _coding(code: Code) -> Json:
    return {"system": code.system, "code": code.code, "display": code.display}
