"""`POST /api/v1/patients/{id}/erasure`: the operator erases one patient (GDPR art. 17).

The same erasure as `ehealthlab db erase-patient` (store/erasure.py), for an operator who works
through the API: the record names the operator's token as who erased. On TimescaleDB the
per-device hourly aggregate is left to its policy (within 30 minutes) rather than refreshed in
the request; the providers' view of it shows nothing of the patient at once, their enrolments
being gone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ehealthlab.api.auth import ContextDep, OperatorDep
from ehealthlab.api.problems import responses
from ehealthlab.fhir.bulk.worker import exports_directory
from ehealthlab.gateway.routes_common import PatientIdDep
from ehealthlab.store.erasure import erase_patient

router = APIRouter(prefix="/api/v1")


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: Annotated[
        str, Field(default="", max_length=500, description="kept with the record; no identifiers")
    ]


class Erasure(BaseModel):
    """What was erased; `erased_before`: an earlier request had, and nothing was left."""

    patient_id: UUID
    erased_at: datetime
    erased_before: bool
    counts: Annotated[dict[str, int], Field(description="rows deleted, by table")]
    exports_withdrawn: Annotated[list[UUID], Field(description="bulk exports withdrawn")]


@router.post(
    "/patients/{patient_id}/erasure",
    tags=["patients"],
    summary="Erase one patient: readings, alerts, enrolments, FHIR resources (operator)",
    description="GDPR art. 17. Deletes everything of the patient, keeps the rollups right, "
    "withdraws bulk exports that may include them and records the erasure (counts, who, "
    "when; never the identifier). Asking again answers `erased_before` with nothing left.",
    responses=responses(401, 403, 404, 422),
)
def erase(
    caller: OperatorDep, patient_id: PatientIdDep, context: ContextDep, body: ErasureRequest
) -> Erasure:
    with context.pool.connection() as conn:
        report = erase_patient(
            conn,
            patient_id,
            erased_by=f"token:{caller.token_id}",
            reason=body.reason,
            exports_dir=exports_directory(context.settings),
            # TimescaleDB: the hourly aggregate's policy recomputes the erased hours within
            # 30 minutes; done here it would hold the request for as long as recomputing every
            # device's hours over the patient's span takes
            refresh=False,
        )
    return Erasure(
        patient_id=report.patient_id,
        erased_at=report.erased_at,
        erased_before=report.erased_before,
        counts=report.counts,
        exports_withdrawn=report.exports_withdrawn,
    )
