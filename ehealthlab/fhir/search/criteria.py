"""The criteria of a search, typed: what the parser (query.py) hands the SQL
(observations.py, tables.py, audit_events.py), before any SQL is written.

A search is a sequence of Clauses, one per occurrence of a parameter: a clause's values are
OR-ed, clauses AND-ed. A value is a DateRange, MetricMatch, StringMatch, EntityRef or
OrganisationTypeMatch, or a plain id, code or reference; values.py makes them. A parameter
the server cannot use is a SearchParameterError naming it (400).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ehealthlab.errors import InvalidInputError


class SearchParameterError(InvalidInputError):
    """A search parameter (or its value) the server cannot use; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class DateRange:
    """A date parameter value: its prefix and the search value's range at its precision
    (lower included, upper excluded; None: unbounded)."""

    prefix: str
    lower: datetime | None
    upper: datetime | None


@dataclass(frozen=True, slots=True)
class MetricMatch:
    """Observations of these stored metrics, from devices of these types (None: any type)."""

    metrics: frozenset[str]
    device_types: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class StringMatch:
    """A string parameter value, case- and accent-folded unless exact."""

    text: str
    mode: Literal["starts", "exact", "contains"]


@dataclass(frozen=True, slots=True)
class EntityRef:
    """An AuditEvent entity: a resource type and id."""

    resource_type: str
    resource_id: str


@dataclass(frozen=True, slots=True)
class OrganisationTypeMatch:
    """Organisations of these kinds, or (asl) those identified by an FLS code."""

    kinds: frozenset[str]
    asl: bool = False


@dataclass(frozen=True, slots=True)
class Clause:
    """One occurrence of a parameter. Its values are OR-ed, clauses are AND-ed; a clause
    left with no values (none could match) matches nothing. `missing` is the :missing
    modifier (True: the element is absent)."""

    name: str
    values: tuple[Any, ...] = ()
    missing: bool | None = None
