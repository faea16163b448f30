"""A health provider's page: its open alerts first, then its patients and their enrolments.

From it a provider registers a patient, enrols one with a device, ends an enrolment and
acknowledges an alert, each through the JSON API's own function; a refused form comes back on
the same page with the API's message and what was typed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Query
from fastapi.responses import Response

from ehealthlab.api.auth import ApiContext, ContextDep
from ehealthlab.api.problems import status_of
from ehealthlab.contract.pilot_time import pilot_day
from ehealthlab.errors import ConflictError, EhealthlabError, InvalidInputError, NotFoundError
from ehealthlab.gateway import alert_routes, patient_routes, schemas
from ehealthlab.gateway.routes_common import AlertIdDep, EnrolmentIdDep
from ehealthlab.portal import forms, render
from ehealthlab.portal.routes_common import (
    FormDep,
    PortalUser,
    ProviderUser,
    municipality_choices,
    notice_for,
    portal_router,
    see_other,
)

router = portal_router()


def _today() -> date:
    """The pilot's day (Europe/Rome), the one enrolments start and end on."""
    return pilot_day(datetime.now(UTC))


def _patients_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None, notice: str | None = None,
) -> Response:  # fmt: skip
    patients = patient_routes.list_patients(user.principal, context)
    alerts = alert_routes.list_alerts(user.principal, context, status="open", limit=200)
    municipalities, _ = municipality_choices()
    return render.page(
        "patients.j2", status_of(error) if error else 200, user=user, patients=patients,
        labels={p.id: p.label for p in patients}, alerts=alerts,
        municipalities=municipalities, names={code: name for code, name, _ in municipalities},
        today=_today(), form=form, error=error, notice=notice,
    )  # fmt: skip


@router.get("/patients")
def patients(
    user: ProviderUser, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _patients_page(user, context, notice=notice_for(done))


@router.post("/patients")
def register_patient(user: ProviderUser, form: FormDep, context: ContextDep) -> Response:
    try:
        patient_routes.register_patient(user.principal, forms.patient_create(form), context)
    except InvalidInputError as exc:
        return _patients_page(user, context, error=exc, form=form)
    return see_other("/portal/patients?done=patient")


@router.post("/enrolments")
def enrol(user: ProviderUser, form: FormDep, context: ContextDep) -> Response:
    try:
        body = forms.enrolment_create(form, municipality_choices()[1])
        patient_routes.enrol(user.principal, body, context)
    except (InvalidInputError, NotFoundError) as exc:
        return _patients_page(user, context, error=exc, form=form)
    return see_other("/portal/patients?done=enrolled")


@router.post("/enrolments/{enrolment_id}/end")
def end_enrolment(
    user: ProviderUser, form: FormDep, context: ContextDep, enrolment_id: EnrolmentIdDep
) -> Response:
    """End an enrolment today, today included: the API's end, never moved later.

    Today's readings stay the patient's (the device may have measured them this morning), so
    the device can be enrolled again from tomorrow. Another provider's enrolment, or none, is
    the API's 404.
    """
    today = _today()
    enrolment = patient_routes.get_enrolment(user.principal, enrolment_id, context)
    try:
        if enrolment.end is not None and enrolment.end < today:  # a page shown before it ended
            raise ConflictError(f"the enrolment already ended on {enrolment.end}")
        patient_routes.end_enrolment(
            user.principal, enrolment_id, schemas.EnrolmentEnd(end=today), context
        )
    except (InvalidInputError, ConflictError) as exc:  # e.g. one that starts after today
        return _patients_page(user, context, error=exc)
    return see_other("/portal/patients?done=ended")


@router.post("/alerts/{alert_id}/ack")
def acknowledge(
    user: ProviderUser, form: FormDep, context: ContextDep, alert_id: AlertIdDep
) -> Response:
    alert_routes.acknowledge_alert(user.principal, alert_id, context)
    return see_other("/portal/patients?done=acknowledged")
