"""The operator's (CMTo's) pages: organisations, mini-pilots and the pilot report.

The operator admits organisations (the first token shown once), defines mini-pilots and
reads the pilot report of a period and population, the one `ehealthlab evaluate --format
html` writes, computed when asked from one snapshot of the store.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

import psycopg
from fastapi import Query
from fastapi.responses import Response

from ehealthlab.api.auth import ApiContext, ContextDep
from ehealthlab.api.problems import status_of
from ehealthlab.errors import (
    EhealthlabError,
    InvalidFieldError,
    InvalidInputError,
    ServiceUnavailableError,
)
from ehealthlab.evaluation import routes as evaluation
from ehealthlab.evaluation.dataset import POPULATIONS
from ehealthlab.evaluation.fetch import fetch_dataset
from ehealthlab.evaluation.service import check_request
from ehealthlab.gateway import organisation_routes
from ehealthlab.portal import forms, render
from ehealthlab.portal.routes_common import (
    FormDep,
    OperatorUser,
    PortalUser,
    municipality_choices,
    notice_for,
    portal_router,
    see_other,
)

#: the report form proposes the last 30 days, today included
REPORT_DAYS = timedelta(days=30)

router = portal_router()


def _organisations_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None,
) -> Response:  # fmt: skip
    organisations = organisation_routes.list_organisations(user.principal, context)
    return render.page(
        "organisations.j2", status_of(error) if error else 200, user=user,
        organisations=organisations, form=form, error=error,
    )  # fmt: skip


@router.get("/organisations")
def organisations(user: OperatorUser, context: ContextDep) -> Response:
    return _organisations_page(user, context)


@router.post("/organisations")
def admit(user: OperatorUser, form: FormDep, context: ContextDep) -> Response:
    try:
        created = organisation_routes.create_organisation(
            user.principal, forms.organisation_create(form), context
        )
    except InvalidInputError as exc:
        return _organisations_page(user, context, error=exc, form=form)
    return render.page("admitted.j2", 201, user=user, created=created)


def _mini_pilots_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None, notice: str | None = None,
) -> Response:  # fmt: skip
    organisations = organisation_routes.list_organisations(user.principal, context)
    pilots = evaluation.list_mini_pilots(user.principal, context)
    municipalities, _ = municipality_choices()
    return render.page(
        "mini_pilots.j2", status_of(error) if error else 200, user=user, pilots=pilots,
        startups=[o for o in organisations if o.kind == "startup"],
        names={o.id: o.name for o in organisations}, municipalities=municipalities,
        municipality_names={code: name for code, name, _ in municipalities},
        form=form, error=error, notice=notice,
    )  # fmt: skip


@router.get("/mini-pilots")
def mini_pilots(
    user: OperatorUser, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _mini_pilots_page(user, context, notice=notice_for(done))


@router.post("/mini-pilots")
def define_mini_pilot(user: OperatorUser, form: FormDep, context: ContextDep) -> Response:
    try:
        evaluation.create_mini_pilot(user.principal, forms.mini_pilot_create(form), context)
    except InvalidInputError as exc:
        return _mini_pilots_page(user, context, error=exc, form=form)
    return see_other("/portal/mini-pilots?done=mini-pilot")


@router.get("/report")
def report_form(user: OperatorUser) -> Response:
    today = datetime.now(UTC).date()
    return render.page(
        "report.j2", user=user, start=today - REPORT_DAYS, end=today + timedelta(days=1),
        populations=POPULATIONS,
    )  # fmt: skip


@router.get("/report/view")
def report(
    user: OperatorUser,
    context: ContextDep,
    start: Annotated[date, Query(alias="from")],
    end: Annotated[date, Query(alias="to")],
    population: Annotated[Literal["real", "simulated"], Query()] = "real",
) -> Response:
    """The pilot report (docs/report.md), computed now from one snapshot of the store."""
    period = check_request(start, end, "all", population)
    if (end - start).days > 366:
        raise InvalidFieldError("to", "a report covers at most a year")
    # matplotlib loads only for the report, as in `ehealthlab evaluate --format html`
    from ehealthlab.evaluation.report import build_report  # noqa: PLC0415

    try:
        with context.pool.connection() as conn:
            data = fetch_dataset(conn, period, population)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"the database is unavailable ({str(exc).strip().splitlines()[0]})"
        ) from exc
    html = build_report(data, context.settings)
    return render.secure(
        Response(html, media_type="text/html; charset=utf-8"), policy=render.REPORT_POLICY
    )
