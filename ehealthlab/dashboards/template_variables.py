"""The browser's half of Grafana's query expansion: template variables.

Before a panel's SQL leaves the browser, Grafana interpolates its template variables
(``$var``, ``${var:fmt}``, ``[[var]]``, ``$__interval``, ``$__interval_ms``, ``$__from``,
``$__to``) with the SQL data source's quoting rules. :func:`interpolate_variables` does the
same, text for text, and leaves ``$__macro(...)`` calls and the server's global substitutions
for macros.py. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ehealthlab.dashboards.grafana_time import EPOCH, MS, epoch_ms, seconds_to_hms
from ehealthlab.dashboards.query_context import (
    ExpansionError,
    QueryContext,
    UndefinedVariableError,
)

__all__ = ["interpolate_variables"]

# Grafana's variable syntax (scenes' VARIABLE_REGEX): $var | [[var]] [[var:fmt]] |
# ${var} ${var.path} ${var:fmt}. JavaScript's \w is ASCII.
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}", re.ASCII
)

_Value = str | int | list[str]


def interpolate_variables(sql: str, context: QueryContext) -> str:
    """What the SQL data source's ``applyTemplateVariables`` does to ``rawSql``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        if match.group(5) is not None:
            raise ExpansionError(f"{match.group(0)}: field paths are not supported")
        value = _lookup(name, context)
        if value is None:
            if name.startswith("__") and match.group(1):
                return match.group(0)  # $__macro(...) or a server-side global: for later
            raise UndefinedVariableError(
                f"${name} is not a template variable (defined: {sorted(context.variables)})"
            )
        return _format_default(value) if fmt is None else _format(value, fmt, match.group(0))

    return _VARIABLE.sub(replace, sql)


def _lookup(name: str, context: QueryContext) -> _Value | None:
    """The query's scoped variables first, then the dashboard's, then the time macros."""
    interval_ms = context.interval // MS
    if name == "__interval":
        return seconds_to_hms(interval_ms / 1000)
    if name == "__interval_ms":
        return interval_ms
    if name in context.variables:
        value = context.variables[name]
        return value if isinstance(value, str) else list(value)
    if name in ("__from", "__to"):
        return epoch_ms(context.time_from if name == "__from" else context.time_to)
    return None


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format_default(value: _Value) -> str:
    """``SqlDatasource.interpolateVariable``: one value is only escaped, a list is quoted."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.replace("'", "''")
    return ",".join(_quote_literal(v) for v in value)


def _quote_each(quote: str, escapes: dict[str, str]) -> Callable[[list[str], list[str]], str]:
    table = str.maketrans(escapes)

    def formatter(values: list[str], _args: list[str]) -> str:
        return ",".join(quote + v.translate(table) + quote for v in values)

    return formatter


# Grafana's (scenes') format registry, the formats we need: each gets the values as a list.
_FORMATS: dict[str, Callable[[list[str], list[str]], str]] = {
    "raw": lambda values, _args: ",".join(values),  # JavaScript's String(array)
    "csv": lambda values, _args: ",".join(values),
    "join": lambda values, args: (args[0] if args else ",").join(values),
    "pipe": lambda values, _args: "|".join(values),
    "glob": lambda values, _args: (
        "{" + ",".join(values) + "}" if len(values) > 1 else ",".join(values)
    ),
    "singlequote": _quote_each("'", {"'": "\\'"}),
    "doublequote": _quote_each('"', {'"': '\\"'}),
    "sqlstring": _quote_each("'", {"'": "''", '"': '\\"'}),
}


def _format(value: _Value, fmt: str, expression: str) -> str:
    """An explicit ``${var:format}`` or ``${var:format:argument}``."""
    name, *args = fmt.split(":")
    if name == "date" and isinstance(value, int):
        return _format_date(value, args, expression)
    formatter = _FORMATS.get(name)
    if formatter is None:
        raise ExpansionError(f"{expression}: format {fmt!r} is not supported here")
    return formatter(value if isinstance(value, list) else [str(value)], args)


def _format_date(epoch_ms: int, args: list[str], expression: str) -> str:
    """``${__from:date}``, ``${__from:date:iso|seconds|ms}`` (moment.js patterns are not)."""
    style = args[0] if args else "iso"
    if style == "ms":
        return str(epoch_ms)
    if style == "seconds":
        return str((epoch_ms + 500) // 1000)  # Math.round(ms / 1000)
    if style == "iso":  # JavaScript's toISOString()
        instant = EPOCH + epoch_ms * MS
        millis = instant.microsecond // 1000
        return f"{instant.year:04d}-{instant:%m-%dT%H:%M:%S}.{millis:03d}Z"
    raise ExpansionError(f"{expression}: date format {style!r} is not supported here")
