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
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

__all__ = [
    "ExpansionError",
    "MacroError",
    "QueryContext",
    "UndefinedVariableError",
    "expand",
    "interval_for",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_NS_PER_S = 1_000_000_000


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
        if self.interval <= timedelta(0) or self.interval % _MS:
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
    (:func:`_round_interval_ms`), then raised to ``min_interval``. Defaults: a dashboard panel
    uses its width in pixels as ``max_data_points`` (500 when the width is unknown, the scenes
    query runner's fallback) unless the panel sets "Max data points"; ``min_interval`` is the
    panel's "Min interval", else the data source's ``timeInterval``, which SQL data sources
    default to ``"1m"``. ``None`` means no lower limit (Grafana's 1 ms).
    """
    low_limit_ms = _interval_to_ms(min_interval) if min_interval else 1
    span_ms = _epoch_ms(time_to) - _epoch_ms(time_from)
    interval_ms = _round_interval_ms(span_ms / max_data_points)
    return timedelta(milliseconds=max(interval_ms, low_limit_ms))


def expand(sql: str, context: QueryContext) -> str:
    """The SQL Grafana sends to PostgreSQL for a panel query ``sql`` in ``context``."""
    sql = _interpolate_variables(sql, context)  # in the browser
    sql = _strip_comments(sql)  # in the server from here on
    # Grafana would pass a leftover $__typo through to PostgreSQL (or, for $__intervalx,
    # replace its "$__interval" part below): we stop at it.
    leftover = re.search(r"\$(__\w*)(?!\w|\()", sql, re.ASCII)
    if leftover and leftover.group(1) not in ("__interval", "__interval_ms"):
        raise UndefinedVariableError(
            f"${leftover.group(1)} is neither a Grafana variable nor a macro call"
        )
    # sqleng.Interpolate's global substitutions, plain text replacements in this order
    interval_ms = context.interval // _MS
    sql = sql.replace("$__interval_ms", str(interval_ms))
    sql = sql.replace("$__interval", _go_format_interval(interval_ms))
    sql = sql.replace("$__unixEpochFrom()", str(_epoch_seconds(context.time_from)))
    sql = sql.replace("$__unixEpochTo()", str(_epoch_seconds(context.time_to)))
    return _expand_macros(sql, context)


# --- 1. the browser: template variables -----------------------------------------------------

# Grafana's variable syntax (scenes' VARIABLE_REGEX): $var | [[var]] [[var:fmt]] |
# ${var} ${var.path} ${var:fmt}. JavaScript's \w is ASCII.
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}", re.ASCII
)

_Value = str | int | list[str]


def _interpolate_variables(sql: str, context: QueryContext) -> str:
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
    interval_ms = context.interval // _MS
    if name == "__interval":
        return _seconds_to_hms(interval_ms / 1000)
    if name == "__interval_ms":
        return interval_ms
    if name in context.variables:
        value = context.variables[name]
        return value if isinstance(value, str) else list(value)
    if name in ("__from", "__to"):
        return _epoch_ms(context.time_from if name == "__from" else context.time_to)
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
        instant = _EPOCH + epoch_ms * _MS
        millis = instant.microsecond // 1000
        return f"{instant.year:04d}-{instant:%m-%dT%H:%M:%S}.{millis:03d}Z"
    raise ExpansionError(f"{expression}: date format {style!r} is not supported here")


def _seconds_to_hms(seconds: float) -> str:
    """``rangeutil.secondsToHms``: the ``$__interval`` text, in its largest whole unit only."""
    for unit, size, modulo in (
        ("y", 31536000, float("inf")),
        ("d", 86400, 31536000),
        ("h", 3600, 86400),
        ("m", 60, 3600),
        ("s", 1, 60),
    ):
        count = math.floor((seconds % modulo) / size)
        if count:
            return f"{count}{unit}"
    millis = math.floor(seconds * 1000.0)
    return f"{millis}ms" if millis else "less than a millisecond"


_INTERVAL_UNIT_S = {
    "y": 31536000,
    "M": 2592000,
    "w": 604800,
    "d": 86400,
    "h": 3600,
    "m": 60,
    "s": 1,
    "ms": 0.001,
}


def _interval_to_ms(text: str) -> int:
    """``rangeutil.intervalToMs``: a unit-less number is seconds; the count's fraction is cut."""
    if re.fullmatch(r"\s*\d+(\.\d*)?\s*", text) and float(text):
        return int(float(text)) * 1000
    match = re.match(r"(-?\d+(?:\.\d+)?)(ms|[Mwdhmsy])", text)
    if not match:
        raise ValueError(f"invalid interval {text!r}")
    return round(_INTERVAL_UNIT_S[match.group(2)] * 1000 * int(float(match.group(1))))


# rangeutil.roundInterval: (below this many ms, use this interval in ms)
_ROUNDING = (
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10000),
    (17500, 15000),
    (25000, 20000),
    (45000, 30000),
    (90000, 60000),
    (210000, 120000),
    (450000, 300000),
    (750000, 600000),
    (1050000, 900000),
    (1500000, 1200000),
    (2700000, 1800000),
    (5400000, 3600000),
    (9000000, 7200000),
    (16200000, 10800000),
    (32400000, 21600000),
    (86400000, 43200000),
    (604800000, 86400000),
    (1814400000, 604800000),
    (3628800000, 2592000000),
)


def _round_interval_ms(interval_ms: float) -> int:
    for below, rounded in _ROUNDING:
        if interval_ms < below:
            return rounded
    return 31536000000  # 1y


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
        f"{column} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
    ),
    "__timeFrom": lambda _column, start, _end: f"'{_rfc3339(start)}'",
    "__timeTo": lambda _column, _start, end: f"'{_rfc3339(end)}'",
    "__unixEpochFilter": lambda column, start, end: (
        f"{column} >= {_epoch_seconds(start)} AND {column} <= {_epoch_seconds(end)}"
    ),
    "__unixEpochNanoFilter": lambda column, start, end: (
        f"{column} >= {_epoch_ns(start)} AND {column} <= {_epoch_ns(end)}"
    ),
    "__unixEpochNanoFrom": lambda _column, start, _end: str(_epoch_ns(start)),
    "__unixEpochNanoTo": lambda _column, _start, end: str(_epoch_ns(end)),
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
    whole, rest = divmod(nanoseconds, _NS_PER_S)
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
        return count * (7 if unit == "w" else 1) * 86400 * _NS_PER_S
    try:
        return _parse_go_duration_ns(text)
    except ValueError:
        raise MacroError(f"error parsing interval {original}") from None


_GO_DURATION_UNITS = {
    "ns": 1,
    "us": 1000,
    "\u00b5s": 1000,  # Go accepts both micro signs
    "\u03bcs": 1000,
    "ms": 1_000_000,
    "s": _NS_PER_S,
    "m": 60 * _NS_PER_S,
    "h": 3600 * _NS_PER_S,
}


_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def _parse_go_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration``: an optional sign, then numbers with units (``1h30m``).

    Raises ``ValueError`` where Go returns an error (Go's overflow checks are left out).
    """
    negative = text.startswith("-")
    rest = text[1:] if text.startswith(("-", "+")) else text
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(text)
    total = 0
    while rest:
        part = _DURATION_PART.match(rest)
        if part is None or not part.group(0):
            raise ValueError(text)
        whole, digits, unit = part.group(1), part.group(2) or "", part.group(3)
        if not (whole or digits) or unit not in _GO_DURATION_UNITS:
            raise ValueError(text)
        size = _GO_DURATION_UNITS[unit]
        total += int(whole or "0") * size
        if digits and int(digits):  # Go adds the fraction through a float64, truncated
            total += int(float(int(digits)) * (float(size) / 10.0 ** len(digits)))
        rest = rest[part.end() :]
    return -total if negative else total


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


def _go_format_interval(interval_ms: int) -> str:
    """``gtime.FormatInterval``: the largest whole unit among y (365 d), d, h, m, s, ms."""
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000)):
        if interval_ms >= size:
            return f"{interval_ms // size}{unit}"
    return f"{interval_ms // 1000}s" if interval_ms >= 1000 else f"{max(interval_ms, 1)}ms"


# --- time --------------------------------------------------------------------------------------


def _epoch_ms(instant: datetime) -> int:
    return (instant - _EPOCH) // _MS


def _epoch_seconds(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(seconds=1)  # Go's Unix() floors


def _epoch_ns(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(microseconds=1) * 1000


def _rfc3339(instant: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: no fraction when whole, no trailing zeros."""
    text = f"{instant.year:04d}-{instant:%m-%dT%H:%M:%S}"
    fraction = f"{instant.microsecond:06d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"
