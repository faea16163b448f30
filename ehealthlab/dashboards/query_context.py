"""What Grafana knows when it runs a panel's query, and why expanding that query can fail.

A :class:`QueryContext` (time range, ``$__interval``, template variables, TimescaleDB switch)
is what both halves of the expansion read: the browser's template variables
(template_variables.py) and the server's macros (macros.py). :func:`interval_for` chooses the
``$__interval`` the way Grafana does, so tests and benchmarks need not guess it. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ehealthlab.dashboards.grafana_time import MS, epoch_ms, interval_to_ms, round_interval_ms

__all__ = [
    "ExpansionError",
    "MacroError",
    "QueryContext",
    "UndefinedVariableError",
    "interval_for",
]


class ExpansionError(ValueError):
    """The SQL cannot be expanded the way Grafana would expand it."""


class UndefinedVariableError(ExpansionError):
    """A ``$variable`` is neither in the context nor one of Grafana's built-in variables."""


class MacroError(ExpansionError):
    """A ``$__macro(...)`` that Grafana's PostgreSQL data source rejects (message as Grafana's)."""


@dataclass(frozen=True)
class QueryContext:
    """What Grafana knows when it runs a panel's query.

    ``time_from``/``time_to`` are the dashboard's time range: timezone-aware, converted to UTC,
    in whole milliseconds (Grafana's range is epoch milliseconds). ``interval`` is the panel's
    ``$__interval`` (see :func:`interval_for`), a positive whole number of milliseconds.
    ``variables`` maps a template variable's name to its value: a ``str`` for a single-value
    variable, a sequence of ``str`` for a multi-value or "include All" variable (even with one
    value selected, as Grafana passes an array then). ``timescaledb`` is the data source's
    TimescaleDB switch, which changes ``$__timeGroup``.
    """

    time_from: datetime
    time_to: datetime
    interval: timedelta
    variables: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    timescaledb: bool = False

    def __post_init__(self) -> None:
        for name in ("time_from", "time_to"):
            value: datetime = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value!r}")
            value = value.astimezone(UTC)
            if value.microsecond % 1000:
                raise ValueError(f"{name} must be in whole milliseconds, as Grafana's are")
            object.__setattr__(self, name, value)
        if self.interval <= timedelta(0) or self.interval % MS:
            raise ValueError(f"interval must be a positive whole number of ms: {self.interval}")


def interval_for(
    time_from: datetime,
    time_to: datetime,
    *,
    max_data_points: int = 500,
    min_interval: str | None = "1m",
) -> timedelta:
    """Grafana's ``$__interval`` for a time range (``rangeutil.calculateInterval``).

    The range divided by ``max_data_points`` is rounded with Grafana's table
    (:func:`round_interval_ms`), then raised to ``min_interval``. Defaults: a dashboard panel
    uses its width in pixels as ``max_data_points`` (500 when the width is unknown, the scenes
    query runner's fallback) unless the panel sets "Max data points"; ``min_interval`` is the
    panel's "Min interval", else the data source's ``timeInterval``, which SQL data sources
    default to ``"1m"``. ``None`` means no lower limit (Grafana's 1 ms).
    """
    low_limit_ms = interval_to_ms(min_interval) if min_interval else 1
    span_ms = epoch_ms(time_to) - epoch_ms(time_from)
    interval_ms = round_interval_ms(span_ms / max_data_points)
    return timedelta(milliseconds=max(interval_ms, low_limit_ms))
