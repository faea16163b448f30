"""`POST /fhir/QuestionnaireResponse`: a SUS response, by a health provider about one of its
own patients or by the operator (CMTo) about any patient or, for a response about no
patient, a municipality (`subject` = `Location/{ISTAT code}`).

A patient's response counts in the municipality of the patient's enrolment active on the day
it was answered, and in the patient's population (simulated when the provider is); a
response about a municipality in the posting organisation's population. The answer is the
stored QuestionnaireResponse (201, with its `Location`); a response that cannot be taken is
an OperationOutcome naming every problem (400 not a valid QuestionnaireResponse, 422 not an
acceptable SUS response, e.g. an item outside 1 to 5, or a patient that is not the caller's).
Mounted by the read and search router (rest/router.py), whose error handlers answer the
rest as OperationOutcomes.
"""

from __future__ import annotations

from uuid import UUID

import orjson
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.auth import ApiContext, ContextDep, Principal, ProviderOrOperatorDep
from ehealthlab.errors import InvalidInputError, NotFoundError
from ehealthlab.evaluation import sus_store
from ehealthlab.fhir import access
from ehealthlab.fhir.access import Tenant
from ehealthlab.fhir.mapping import fast
from ehealthlab.fhir.outcome import FHIR_MEDIA_TYPE, FhirResponse
from ehealthlab.fhir.questionnaires.intake import IntakeError, Issue, Submission, read_submission
from ehealthlab.fhir.questionnaires.sus import questionnaire_response_json
from ehealthlab.fhir.rest.interactions import base_url
from ehealthlab.fhir.rest.runtime import resources_of, run_one
from ehealthlab.fhir.search import tables

#: largest QuestionnaireResponse taken, in bytes
MAX_BODY_BYTES = 64 * 1024
_MEDIA_TYPES = frozenset({FHIR_MEDIA_TYPE, "application/json"})


async def create_questionnaire_response(
    request: Request, caller: ProviderOrOperatorDep, context: ContextDep
) -> Response:
    access.require(caller.kind, "QuestionnaireResponse", "create")
    media_type = request.headers.get("content-type", FHIR_MEDIA_TYPE).split(";")[0].strip()
    if media_type.lower() not in _MEDIA_TYPES:
        return _outcome(
            415, "not-supported", [Issue("", f"send the resource as {FHIR_MEDIA_TYPE}")]
        )
    body = await _body(request)
    try:
        submission = read_submission(body)
        response_id = await run_in_threadpool(_store, context, caller, submission)
    except IntakeError as exc:
        return _outcome(exc.status, "invalid" if exc.status == 400 else "business-rule", exc.issues)
    resources = resources_of(request)
    operator = Tenant("operator", caller.organisation_id)
    record = await run_one(
        resources, tables.read("QuestionnaireResponse", str(response_id), operator)
    )
    if record is None:  # just committed
        raise NotFoundError(f"QuestionnaireResponse/{response_id} was stored but is not found")
    location = f"{base_url(request)}/QuestionnaireResponse/{response_id}"
    return FhirResponse(
        fast.dumps(questionnaire_response_json(record)),
        status_code=201,
        headers={"Location": location, "Cache-Control": "no-store"},
    )


async def _body(request: Request) -> bytes:
    too_large = InvalidInputError(f"a QuestionnaireResponse is at most {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _store(context: ApiContext, caller: Principal, submission: Submission) -> UUID:
    """Check who may post about whom, find the municipality and population, store."""
    where = "QuestionnaireResponse.subject"
    with context.transaction() as conn:
        if submission.patient_id is not None:
            patient = sus_store.patient_context(conn, submission.patient_id, submission.answered_on)
            if patient is None or (
                caller.kind == "provider" and patient.organisation_id != caller.organisation_id
            ):
                raise IntakeError(
                    422, [Issue(where, f"{submission.subject} is not a patient of yours")]
                )
            if patient.municipality is None:
                raise IntakeError(
                    422,
                    [
                        Issue(
                            where,
                            f"{submission.subject} has no enrolment active on "
                            f"{submission.answered_on}, so no municipality to count the "
                            "response in",
                        )
                    ],
                )
            municipality, simulated = patient.municipality, patient.simulated
        else:
            municipality = submission.municipality or ""
            if caller.kind != "operator":
                raise IntakeError(
                    422,
                    [Issue(where, "a health provider posts responses about its own patients")],
                )
            if not sus_store.municipality_exists(conn, municipality):
                raise IntakeError(
                    422,
                    [
                        Issue(
                            where,
                            f"{submission.subject} is no municipality of the Metropolitan "
                            "City of Turin",
                        )
                    ],
                )
            simulated = sus_store.organisation_simulated(conn, caller.organisation_id)
        return sus_store.store_response(
            conn,
            answered_on=submission.answered_on,
            respondent=submission.respondent,
            patient_id=submission.patient_id,
            municipality=municipality,
            items=submission.items,
            simulated=simulated,
            organisation_id=caller.organisation_id,
        )


def _outcome(status: int, code: str, issues: list[Issue]) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code,
                "diagnostics": issue.diagnostics,
                **({"expression": [issue.expression]} if issue.expression else {}),
            }
            for issue in issues
        ],
    }
    return FhirResponse(orjson.dumps(body), status_code=status)
