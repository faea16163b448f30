"""The evaluation's HTTP routes under /api/v1 (operator only): the indicators, and the
mini-pilots CMTo defines.

Handlers stay thin, as the gateway's: the body is validated by `schemas`, the caller by the
API's dependencies, and `mini_pilots` does the rest in the request's one transaction.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Query

from ehealthlab.api.auth import ContextDep, OperatorDep
from ehealthlab.api.problems import responses
from ehealthlab.errors import NotFoundError, ServiceUnavailableError
from ehealthlab.evaluation import mini_pilots, schemas
from ehealthlab.evaluation.dataset import GROUPINGS
from ehealthlab.evaluation.service import check_request, run_evaluation

router = APIRouter(prefix="/api/v1")

_AUTH = (401, 403)


def _mini_pilot_id(mini_pilot_id: str) -> UUID:
    # as the gateway's path ids: anything that is no id is simply not found
    try:
        return UUID(mini_pilot_id)
    except ValueError:
        raise NotFoundError("no such mini-pilot") from None


MiniPilotIdDep = Annotated[UUID, Depends(_mini_pilot_id)]


def _view(pilot: mini_pilots.MiniPilot) -> schemas.MiniPilot:
    return schemas.MiniPilot(
        id=pilot.id,
        name=pilot.name,
        startups=list(pilot.startups),
        municipalities=list(pilot.municipalities),
        start=pilot.start,
        end=pilot.end,
        created_at=pilot.created_at,
    )


# -- mini-pilots ------------------------------------------------------------------------------


@router.post(
    "/mini-pilots",
    status_code=201,
    tags=["mini-pilots"],
    summary="Define a mini-pilot (operator)",
    description="A name, start-ups, municipalities and a date range (both ends included). "
    "The evaluation's group `mini_pilot` counts the enrolled days that lie in the range, of "
    "a device of one of the start-ups, in one of the municipalities. Every reference that "
    "is no start-up or no municipality is named in the 422.",
    responses=responses(*_AUTH, 409, 422),
)
def create_mini_pilot(
    caller: OperatorDep, body: schemas.MiniPilotCreate, context: ContextDep
) -> schemas.MiniPilotCreated:
    with context.transaction() as conn:
        pilot = mini_pilots.create_mini_pilot(
            conn,
            name=body.name,
            startups=body.startups,
            municipalities=body.municipalities,
            start=body.start,
            end=body.end,
        )
    return schemas.MiniPilotCreated(id=pilot.id)


@router.get(
    "/mini-pilots",
    tags=["mini-pilots"],
    summary="List mini-pilots (operator)",
    description="By start date, then name.",
    responses=responses(*_AUTH),
)
def list_mini_pilots(caller: OperatorDep, context: ContextDep) -> list[schemas.MiniPilot]:
    with context.transaction() as conn:
        pilots = mini_pilots.list_mini_pilots(conn)
    return [_view(pilot) for pilot in pilots]


@router.get(
    "/mini-pilots/{mini_pilot_id}",
    tags=["mini-pilots"],
    summary="One mini-pilot (operator)",
    responses=responses(*_AUTH, 404),
)
def get_mini_pilot(
    caller: OperatorDep, mini_pilot_id: MiniPilotIdDep, context: ContextDep
) -> schemas.MiniPilot:
    with context.transaction() as conn:
        pilot = mini_pilots.get_mini_pilot(conn, mini_pilot_id)
    if pilot is None:
        raise NotFoundError(f"no mini-pilot {mini_pilot_id}")
    return _view(pilot)


# -- the indicators ---------------------------------------------------------------------------


@router.get(
    "/evaluation",
    tags=["evaluation"],
    summary="The pilot's indicators (operator)",
    description="Every indicator of docs/indicators.md over [from, to) in days of "
    "Europe/Rome, for all patients (`all`) and per group of `by` ("
    + ", ".join(GROUPINGS)
    + "), for one population (`real` unless asked; simulated data never mix with real). "
    "Read in one snapshot of the store. Every value, small groups included: this is the "
    "operator's view; what is published suppresses small groups.",
    responses=responses(*_AUTH, 422, 503),
)
def get_evaluation(
    caller: OperatorDep,
    context: ContextDep,
    *,
    start: Annotated[date, Query(alias="from", description="first day of the period")],
    end: Annotated[date, Query(alias="to", description="first day after the period")],
    by: Annotated[str, Query(description="the grouping")] = "all",
    population: Annotated[str, Query(description="real or simulated")] = "real",
) -> dict[str, Any]:
    period = check_request(start, end, by, population)
    try:
        with context.pool.connection() as conn:
            return run_evaluation(conn, context.settings, period, by, population)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"the database is unavailable ({str(exc).strip().splitlines()[0]})"
        ) from exc
