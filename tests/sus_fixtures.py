"""What the tests of SUS responses share: a CSV file's header and a neutral response's items,
and a QuestionnaireResponse as a client posts it (`response_body`, `posted`)."""

from __future__ import annotations

import orjson

from ehealthlab.fhir.questionnaires.sus import SUS_URL

HEADER = "answered_on,respondent,patient_id,municipality," + ",".join(
    f"item{n}" for n in range(1, 11)
)
NEUTRAL = ",".join(["3"] * 10)


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
