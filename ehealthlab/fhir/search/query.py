"""FHIR search parameters: parsed and checked into a typed query, before any SQL is written.

Pure functions over the query string's (name, value) pairs, against the table of parameters
(parameters.py). Semantics follow FHIR R4's search page: values separated by commas are
OR-ed, repeated parameters AND-ed; an empty value is ignored; an unknown parameter is ignored
(lenient, the default) or refused (`Prefer: handling=strict`). A value that is well formed
but names nothing we keep (an unknown code, a patient id that is not one of ours) matches
nothing; a malformed one is a SearchParameterError naming the parameter (400). The result
controls (`_count`, `_sort`, `_total`, `_summary`, `_cursor`) are checked here too; the
cursor itself is checked against the search by cursors.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.search.criteria import Clause, SearchParameterError
from ehealthlab.fhir.search.parameters import PARAMETERS, SORTS, SearchParameter
from ehealthlab.fhir.search.values import Context, split_unescaped, unescape

DEFAULT_COUNT = 50
MAX_COUNT = 1000
#: $lastn: the most recent `max` per code, at most this many
MAX_LASTN = 1000
#: a value longer than this is refused before it is parsed
MAX_VALUE_LENGTH = 2048
#: result and format parameters: never "unknown", whatever the handling
CONTROL_PARAMETERS = frozenset(
    {"_count", "_sort", "_summary", "_total", "_cursor", "_format", "_pretty"}
)
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "fhir+json"})


TotalMode = Literal["none", "estimate", "accurate"]
_TOTALS: dict[str, TotalMode] = {"none": "none", "estimate": "estimate", "accurate": "accurate"}


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A search as the server understood it."""

    resource_type: str
    clauses: tuple[Clause, ...]
    #: entries per page; 0 with summary_count
    count: int
    sort: str
    #: `_summary=count` (or `_count=0`): the total, no entries
    summary_count: bool
    #: `_total`: none (no total), estimate (the default: exact when cheap, see
    #: sql.TOTAL_CAP) or accurate (always counted); `_summary=count` counts accurately
    total: TotalMode
    #: the raw `_cursor`, checked by decode_cursor against this search
    cursor: str | None
    #: the filter parameters as understood, in order: the self link, the fingerprint
    used: tuple[tuple[str, str], ...]
    #: parameters ignored (lenient handling), for the OperationOutcome-free self link
    ignored: tuple[str, ...] = ()

    @property
    def with_total(self) -> bool:
        return self.total != "none"

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    def clauses_named(self, *names: str) -> tuple[Clause, ...]:
        return tuple(c for c in self.clauses if c.name in names)


@dataclass(frozen=True, slots=True)
class LastnQuery:
    """`Observation/$lastn`: the Observation criteria and `max` per code."""

    clauses: tuple[Clause, ...]
    max: int
    used: tuple[tuple[str, str], ...]


def strict_handling(prefer: str | None) -> bool:
    """True when the `Prefer` header asks for `handling=strict` (lenient is the default)."""
    if not prefer:
        return False
    for preference in prefer.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').lower() == "strict"
    return False


def check_format(items: Sequence[tuple[str, str]]) -> None:
    """`_format` is tolerated when it asks for JSON; anything else cannot be served (the
    caller answers 406)."""
    for name, value in items:
        if name == "_format" and value.strip().lower().split(";")[0] not in JSON_FORMATS:
            raise UnsupportedFormatError(value)


class UnsupportedFormatError(InvalidInputError):
    """`_format` asks for something other than JSON (406)."""

    def __init__(self, value: str) -> None:
        super().__init__(f"_format: only JSON is served (application/fhir+json), not {value!r}")


def parse_search(
    resource_type: str,
    items: Sequence[tuple[str, str]],
    *,
    strict: bool = False,
    base_url: str = "",
) -> SearchQuery:
    """A search of `resource_type` from its query string's pairs; SearchParameterError
    names what is wrong."""
    controls, clauses, used, ignored = _parse_criteria(
        resource_type, items, strict=strict, base_url=base_url, extra=frozenset()
    )
    summary_count = False
    summary = controls.get("_summary")
    if summary is not None:
        if summary not in ("count", "false", "data"):
            raise SearchParameterError(
                "_summary", f"{summary!r} is not supported (count, false or data)"
            )
        summary_count = summary == "count"
    count = DEFAULT_COUNT
    if "_count" in controls:
        count = _non_negative("_count", controls["_count"])
        summary_count = summary_count or count == 0
        count = min(count, MAX_COUNT)
    sorts = SORTS[resource_type]
    sort = controls.get("_sort", sorts[0])
    if sort not in sorts:
        raise SearchParameterError("_sort", f"{sort!r} is not supported; use {' or '.join(sorts)}")
    total = _TOTALS.get(controls.get("_total", "estimate"))
    if total is None:
        raise SearchParameterError(
            "_total", f"{controls['_total']!r} is not none, estimate or accurate"
        )
    cursor = controls.get("_cursor")
    if cursor is not None and summary_count:
        raise SearchParameterError("_cursor", "a count has no pages")
    return SearchQuery(
        resource_type=resource_type,
        clauses=tuple(clauses),
        count=0 if summary_count else count,
        sort=sort,
        summary_count=summary_count,
        total="accurate" if summary_count else total,
        cursor=cursor,
        used=tuple(used),
        ignored=tuple(ignored),
    )


def parse_lastn(
    items: Sequence[tuple[str, str]], *, strict: bool = False, base_url: str = ""
) -> LastnQuery:
    """`$lastn`: Observation criteria with a patient (or subject, or device) and `max`."""
    controls, clauses, used, _ = _parse_criteria(
        "Observation", items, strict=strict, base_url=base_url, extra=frozenset({"max"})
    )
    for name in ("_count", "_sort", "_cursor", "_summary"):
        if name in controls:
            raise SearchParameterError(name, "$lastn answers every code at once; use max")
    if not any(c.name in ("patient", "subject", "device") for c in clauses):
        raise SearchParameterError("patient", "$lastn needs a patient (or subject, or device)")
    maximum = _non_negative("max", controls.get("max", "1"))
    if not 1 <= maximum <= MAX_LASTN:
        raise SearchParameterError("max", f"give 1 to {MAX_LASTN}")
    return LastnQuery(tuple(clauses), maximum, tuple(used))


def _non_negative(name: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise SearchParameterError(name, f"{text!r} is not a whole number")
    return int(text)


def _parse_criteria(
    resource_type: str,
    items: Sequence[tuple[str, str]],
    *,
    strict: bool,
    base_url: str,
    extra: frozenset[str],
) -> tuple[dict[str, str], list[Clause], list[tuple[str, str]], list[str]]:
    known = {p.name: p for p in PARAMETERS[resource_type]}
    ctx = Context(base_url)
    controls: dict[str, str] = {}
    clauses: list[Clause] = []
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    for raw_name, value in items:
        name, _, modifier = raw_name.partition(":")
        if len(value) > MAX_VALUE_LENGTH:
            raise SearchParameterError(name, f"values are limited to {MAX_VALUE_LENGTH} characters")
        if "\x00" in value:
            raise SearchParameterError(name, "a value may not contain NUL characters")
        if name in CONTROL_PARAMETERS or name in extra:
            if modifier:
                raise SearchParameterError(raw_name, "takes no modifier")
            if name in controls:
                raise SearchParameterError(name, "given more than once")
            if name not in ("_format", "_pretty"):
                controls[name] = value.strip()
            continue
        parameter = known.get(name)
        if parameter is None:
            if strict:
                raise SearchParameterError(
                    raw_name,
                    f"{resource_type} has no search parameter {raw_name!r}; it has "
                    f"{', '.join(sorted(known))}",
                )
            ignored.append(raw_name)
            continue
        if value == "":
            continue  # FHIR: a parameter with an empty value is ignored
        clauses.append(_clause(parameter, modifier or None, value, ctx))
        used.append((raw_name, value))
    return controls, clauses, used, ignored


def _clause(parameter: SearchParameter, modifier: str | None, value: str, ctx: Context) -> Clause:
    label = parameter.name + (f":{modifier}" if modifier else "")
    if modifier is not None and modifier not in parameter.modifiers:
        raise SearchParameterError(label, f"the modifier :{modifier} is not supported here")
    if modifier == "missing":
        if value not in ("true", "false"):
            raise SearchParameterError(label, "is true or false")
        return Clause(parameter.name, missing=value == "true")
    values: list[Any] = []
    for item in split_unescaped(value, ","):
        # tokens split on '|' themselves, so they get their escapes
        text = item if parameter.type == "token" else unescape(item)
        try:
            parsed = parameter.parse(text, modifier, ctx)
        except (ValueError, OverflowError, InvalidInputError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise SearchParameterError(label, str(message)) from None
        if parsed is None:
            continue
        if isinstance(parsed, list):  # a value standing for several (a code, several metrics)
            values.extend(parsed)
        else:
            values.append(parsed)
    return Clause(parameter.name, tuple(values))
