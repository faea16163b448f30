"""Request and response bodies of the evaluation API, as documented in its OpenAPI.

As in the gateway's: requests refuse unknown fields and bound every string and list. Whether
the references of a mini-pilot exist, and whether its `end` is on or after its `start`, is
checked by `ehealthlab.evaluation.mini_pilots`, which names every bad one at once.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ehealthlab.evaluation.mini_pilots import MAX_NAME_LENGTH
from ehealthlab.gateway.schemas import MunicipalityCode

#: no control characters in anything shown back to people or put in a log line
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: most members a request may list in one set (the Metropolitan City has 312 municipalities)
MAX_MEMBERS = 1000


class MiniPilotCreate(BaseModel):
    """A mini-pilot CMTo defines: these start-ups' devices, in these municipalities, from
    `start` to `end` (both included)."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Valli di Lanzo, winter 2026",
                    "startups": ["0b6f2d4e-3c1a-4f5e-9d7c-2a1b3c4d5e6f"],
                    "municipalities": ["001003", "001130"],
                    "start": "2026-01-01",
                    "end": "2026-03-31",
                }
            ]
        },
    )

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=_PRINTABLE,
            description="unique among mini-pilots",
            examples=["Valli di Lanzo, winter 2026"],
        ),
    ]
    startups: Annotated[
        list[UUID],
        Field(
            min_length=1,
            max_length=MAX_MEMBERS,
            description="ids of start-up organisations (a repeated id counts once)",
        ),
    ]
    municipalities: Annotated[
        list[MunicipalityCode],
        Field(
            min_length=1,
            max_length=MAX_MEMBERS,
            description="ISTAT codes of municipalities of the Metropolitan City of Turin "
            "(a repeated code counts once)",
        ),
    ]
    start: Annotated[date, Field(description="first day, included")]
    end: Annotated[date, Field(description="last day, included; not before `start`")]


class MiniPilotCreated(BaseModel):
    id: UUID


class MiniPilot(BaseModel):
    """A mini-pilot as stored: each start-up and municipality once, sorted."""

    id: UUID
    name: str
    startups: list[UUID]
    municipalities: list[str]
    start: date
    end: Annotated[date, Field(description="last day, included")]
    created_at: datetime
