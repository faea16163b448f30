"""The evaluation's HTTP routes under /api/v1: the mini-pilots CMTo defines (operator only).

Handlers stay thin, as the gateway's: the body is validated by `schemas`, the caller by the
API's dependencies, and `mini_pilots` does the rest in the request's one transaction.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends

from ehealthlab.api.auth import ContextDep, OperatorDep
from ehealthlab.api.problems import responses
from ehealthlab.errors import NotFoundError
from ehealthlab.evaluation import mini_pilots, schemas

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
