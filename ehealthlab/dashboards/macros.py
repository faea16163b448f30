"""The SQL Grafana's PostgreSQL data source really sends, for tests that run every panel's query.

A dashboard panel's SQL is not what PostgreSQL sees. Grafana rewrites it twice:

1. in the browser, template variables (``$var``, ``${var:fmt}``, ``[[var]]``, ``$__interval``,
   ``$__interval_ms``, ``$__from``, ``$__to``) are interpolated with the SQL data source's
   quoting rules;
2. in the server, comments are stripped, the global substitutions (``$__interval``,
   ``$__interval_ms``, ``$__unixEpochFrom()``, ``$__unixEpochTo()``) are made, and the
   ``$__name(args)`` macros are expanded.

:func:`expand` reproduces both, text for text, so that a test can execute a panel's query
against a real database exactly as Grafana would. It was checked against the Grafana sources
named in docs/grafana-macros.md. Where Grafana would silently send broken SQL (an undefined
variable left as ``$name``, an unknown macro) we raise instead: our tests want typos caught.

This module is the server's half and :func:`expand`; the browser's half is
template_variables.py, what a query is expanded in (:class:`QueryContext`, ``$__interval``)
is query_context.py, and Grafana's ways of writing times are grafana_time.py. No I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from ehealthlab.dashboards.grafana_time import (
    MS,
    NS_PER_S,
    epoch_ns,
    epoch_seconds,
    go_format_interval,
    parse_go_duration_ns,
    rfc3339,
)
from ehealthlab.dashboards.query_context import MacroError, QueryContext, UndefinedVariableError
from ehealthlab.dashboards.template_variables import interpolate_variables

__all__ = ["expand"]


def expand(sql: str, context: QueryContext) -> str:
    """The SQL Grafana sends to PostgreSQL for a panel query ``sql`` in ``context``."""
    sql = interpolate_variables(sql, context)  # in the browser
    sql = _strip_comments(sql)  # in the server from here on
    # Grafana would pass a leftover $__typo through to PostgreSQL (or, for $__intervalx,
    # replace its "$__interval" part below): we stop at it.
    leftover = re.search(r"\$(__\w*)(?!\w|\()", sql, re.ASCII)
    if leftover and leftover.group(1) not in ("__interval", "__interval_ms"):
        raise UndefinedVariableError(
            f"${leftover.group(1)} is neither a Grafana variable nor a macro call"
        )
    # sqleng.Interpolate's global substitutions, plain text replacements in this order
    interval_ms = context.interval // MS
    sql = sql.replace("$__interval_ms", str(interval_ms))
    sql = sql.replace("$__interval", go_format_interval(interval_ms))
    sql = sql.replace("$__unixEpochFrom()", str(epoch_seconds(context.time_from)))
    sql = sql.replace("$__unixEpochTo()", str(epoch_seconds(context.time_to)))
    return _expand_macros(sql, context)


# --- 2. the server: comments, global substitutions, macros -----------------------------------


def _strip_comments(sql: str) -> str:
    """The PostgreSQL data source's ``stripSQLComments`` (quote-aware, Grafana 12.1.11+).

    ``--`` and ``/* */`` comments go (a line comment's newline stays), except inside
    '…' strings, "…" identifiers and $$…$$ / $tag$…$tag$ strings. As in Grafana, an unclosed
    block comment drops the rest of the SQL but its last character.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        tag = _dollar_tag(sql, i) if char == "$" else ""
        if tag:  # a dollar-quoted string, copied to its closing tag (or the end)
            close = sql.find(tag, i + len(tag))
            end = n if close < 0 else close + len(tag)
        elif char in "'\"":  # a string or an identifier; a doubled quote stays inside
            end = i + 1
            while end < n and not (sql[end] == char and sql[end + 1 : end + 2] != char):
                end += 2 if sql[end] == char else 1
            end = min(end + 1, n)
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = close + 2 if close >= 0 else max(i + 2, n - 1)
            continue
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline
            continue
        else:
            end = i + 1
        out.append(sql[i:end])
        i = end
    return "".join(out)


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _dollar_tag(sql: str, i: int) -> str:
    """The opening ``$$`` or ``$tag$`` of a dollar-quoted string at ``i``, else ``""``.

    ``$__macro(``, ``$1`` and the like are not tags: a tag ends with ``$``.
    """
    match = _DOLLAR_TAG.match(sql, i)
    return match.group(0) if match else ""


# The macro call pattern Grafana's SQL data sources share (pkg/tsdb/sqlmacro).
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


def _expand_macros(sql: str, context: QueryContext) -> str:
    """``postgresMacroEngine.Interpolate``: each ``$name(a, b)`` becomes its SQL."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "__timeGroup":
            # Grafana < 5.3 compatibility: "$__timeGroup(...)," (looked up at the first place
            # the same call appears) is taken as $__timeGroupAlias.
            after = sql.find(match.group(0)) + len(match.group(0))
            if sql[after : after + 1] == ",":
                name = "__timeGroupAlias"
        args = [arg.strip(" ") for arg in match.group(2).split(",")]
        return _macro(name, args, context)

    return _MACRO.sub(replace, sql)


# The macros that only need the column and the time range: (column, from, to) -> SQL.
_TIME_MACROS: dict[str, Callable[[str, datetime, datetime], str]] = {
    "__time": lambda column, _start, _end: f'{column} AS "time"',
    "__timeEpoch": lambda column, _start, _end: f'extract(epoch from {column}) as "time"',
    "__timeFilter": lambda column, start, end: (
        f"{column} BETWEEN '{rfc3339(start)}' AND '{rfc3339(end)}'"
    ),
    "__timeFrom": lambda _column, start, _end: f"'{rfc3339(start)}'",
    "__timeTo": lambda _column, _start, end: f"'{rfc3339(end)}'",
    "__unixEpochFilter": lambda column, start, end: (
        f"{column} >= {epoch_seconds(start)} AND {column} <= {epoch_seconds(end)}"
    ),
    "__unixEpochNanoFilter": lambda column, start, end: (
        f"{column} >= {epoch_ns(start)} AND {column} <= {epoch_ns(end)}"
    ),
    "__unixEpochNanoFrom": lambda _column, start, _end: str(epoch_ns(start)),
    "__unixEpochNanoTo": lambda _column, _start, end: str(epoch_ns(end)),
}


def _macro(name: str, args: list[str], context: QueryContext) -> str:
    """One macro, as ``evaluateMacro`` writes it. ``args`` has at least one (maybe empty) item."""
    if name in ("__timeGroupAlias", "__unixEpochGroupAlias"):
        return _macro(name.removesuffix("Alias"), args, context) + ' AS "time"'
    if name in ("__timeGroup", "__unixEpochGroup"):
        column, seconds = args[0], _group_seconds(name, args)
        if name == "__unixEpochGroup":
            return f"floor(({column})/{_go_float(seconds)})*{_go_float(seconds)}"
        if context.timescaledb:
            return f"time_bucket('{seconds:.3f}s',{column})"
        return f"floor(extract(epoch from {column})/{_go_float(seconds)})*{_go_float(seconds)}"
    render = _TIME_MACROS.get(name)
    if render is None:
        raise MacroError(f'unknown macro "{name}"')
    return render(args[0], context.time_from, context.time_to)


def _group_seconds(name: str, args: list[str]) -> float:
    """The bucket of ``$__timeGroup(column, interval[, fill])`` in seconds (Go ``Seconds()``).

    The fill argument (``NULL``, ``previous`` or a number) is only validated: filling gaps is
    done by Grafana on the query's result, not in the SQL.
    """
    if len(args) < 2:
        raise MacroError(f"macro {name} needs time column and interval and optional fill value")
    nanoseconds = _parse_interval_ns(args[1].strip("'"), args[1])
    if nanoseconds <= 0:
        raise MacroError(f"interval must be positive, got {args[1]}")
    if len(args) == 3 and args[2] not in ("NULL", "previous") and not _is_go_float(args[2]):
        raise MacroError(f"error parsing fill value {args[2]}")
    whole, rest = divmod(nanoseconds, NS_PER_S)
    return float(whole) + float(rest) / 1e9


def _parse_interval_ns(text: str, original: str) -> int:
    """``gtime.ParseInterval``: ``<n>d`` / ``<n>w``, else a Go duration (``5m``, ``1h30m``)."""
    calendar = re.fullmatch(r"([0-9]+)([dwMy])", text)
    if calendar:
        count, unit = int(calendar.group(1)), calendar.group(2)
        if unit in "My":
            # Grafana measures months and years from the server's current date, so the SQL
            # would change with the calendar: use days or weeks.
            raise MacroError(f"interval {original} depends on Grafana's wall clock; use d or w")
        return count * (7 if unit == "w" else 1) * 86400 * NS_PER_S
    try:
        return parse_go_duration_ns(text)
    except ValueError:
        raise MacroError(f"error parsing interval {original}") from None


_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity)|nan", re.IGNORECASE
)


def _is_go_float(text: str) -> bool:
    """Whether Go's ``strconv.ParseFloat`` accepts ``text`` (decimal forms, inf, nan)."""
    if not _GO_FLOAT.fullmatch(text):
        return False
    return text.lower().lstrip("+-") in ("inf", "infinity", "nan") or math.isfinite(float(text))


def _go_float(value: float) -> str:
    """Go's ``%v`` of a positive float64: shortest digits, exponent below 1e-4 or from 1e6."""
    _, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite number: {value!r}")
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # digits before the decimal point
    if point - 1 < -4 or point - 1 >= 6:
        tail = "." + digits[1:] if len(digits) > 1 else ""
        return f"{digits[0]}{tail}e{'-' if point < 1 else '+'}{abs(point - 1):02d}"
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]
