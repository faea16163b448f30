"""FHIR search parameters: parsed and checked into a typed query, before any SQL is written.

Pure functions over the query string's (name, value) pairs. Every parameter the API serves is
declared once in PARAMETERS; the CapabilityStatement is built from the same table, so it
cannot claim a parameter the parser does not know. Semantics follow FHIR R4's search page:
values separated by commas are OR-ed, repeated parameters AND-ed; an empty value is ignored;
an unknown parameter is ignored (lenient, the default) or refused (`Prefer: handling=strict`).
A value that is well formed but names nothing we keep (an unknown code, a patient id that is
not one of ours) matches nothing; a malformed one is a SearchParameterError naming the
parameter (400).

Paging is by keyset: a page link carries an opaque cursor holding the sort key of the row it
continues from, the search's fingerprint (parameters and caller) and the total, signed with
a server key, so a cursor cannot be altered nor replayed by another caller or on another search.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from types import MappingProxyType
from typing import Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo

import orjson

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.mapping.codes import ASL_FLS_SYSTEM as FLS_SYSTEM
from ehealthlab.fhir.mapping.codes import (
    AZIENDA_SANITARIA_LOCALE,
    BLOOD_PRESSURE,
    BLOOD_PRESSURE_CODES,
    DEVICE_ID_SYSTEM,
    DIASTOLIC,
    ISTAT_MUNICIPALITY_SYSTEM,
    ORGANISATION_TYPES,
    PATIENT_PSEUDONYM_SYSTEM,
    SYSTOLIC,
    URI_SYSTEM,
    Code,
    device_type_codes,
    metric_codes,
    observation_category,
)
from ehealthlab.fhir.mapping.ids import OBSERVATION_CODES, ObservationKey, parse_observation_id

#: dates and times without a zone are read in the pilot's time zone (a clinician's "that day")
PILOT_ZONE = ZoneInfo("Europe/Rome")
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

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DATE = re.compile(
    r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_PREFIXED = re.compile(r"(?P<prefix>[a-z]{2})(?P<rest>.*)", re.DOTALL)
DATE_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"})


class SearchParameterError(InvalidInputError):
    """A search parameter (or its value) the server cannot use; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


# -- values -------------------------------------------------------------------------------


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


# -- parameters ---------------------------------------------------------------------------

ParamType = Literal["token", "reference", "date", "string", "number"]


@dataclass(frozen=True, slots=True)
class _Context:
    base_url: str


_Parser = Callable[[str, str | None, _Context], Any]


@dataclass(frozen=True, slots=True)
class SearchParameter:
    """A parameter the API serves: what the CapabilityStatement declares about it, and how
    one of its (comma-separated) values is parsed."""

    name: str
    type: ParamType
    #: canonical URL of the SearchParameter it implements
    definition: str
    documentation: str
    parse: _Parser = field(repr=False, compare=False)
    #: modifiers accepted besides none (`missing`, `exact`, a type for references)
    modifiers: frozenset[str] = frozenset()

    @property
    def allows_missing(self) -> bool:
        return "missing" in self.modifiers


def _spec(name: str) -> str:
    return f"http://hl7.org/fhir/SearchParameter/{name}"


# value parsers: (value, modifier, context) -> a typed value, or None when it cannot match


def _split_token(value: str) -> tuple[str | None, str | None]:
    """`system|code` → (system, code); `code` → (None, code): any system; `|code` → ('',
    code): no system; `system|` → (system, None): any code of the system. `value` still
    has its escapes (`\\|` is a '|' inside the code)."""
    parts = [_unescape(part) for part in _split_unescaped(value, "|")]
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) != 2:
        raise ValueError("a token is [system|]code, with at most one unescaped '|'")
    system, code = parts
    if not system and not code:
        raise ValueError("a token needs a system or a code")
    return system, code or None


def _token_matches(code: Code, system: str | None, wanted: str | None) -> bool:
    if system is not None and code.system != system:
        return False
    return wanted is None or code.code == wanted


def _reference_id(
    value: str, modifier: str | None, ctx: _Context, resource_type: str
) -> str | None:
    """The id a reference names if it is of `resource_type`, None if it names another type;
    ValueError if it is not a reference at all."""
    target = modifier if modifier and modifier[0].isupper() else None
    text = value
    base = ctx.base_url.rstrip("/") + "/"
    if "://" in text:
        if not text.startswith(base):
            return None  # another server's resource: none of ours
        text = text[len(base) :]
    parts = text.split("/")
    if len(parts) == 1:
        kind, resource_id = target or resource_type, parts[0]
    elif len(parts) == 2:
        kind, resource_id = parts
        if target is not None and kind != target:
            raise ValueError(f"the reference names a {kind}, the modifier a {target}")
    else:
        raise ValueError("a reference is [Type/]id (versioned references are not supported)")
    if not _FHIR_ID.fullmatch(resource_id):
        raise ValueError(f"{resource_id!r} is not a FHIR id")
    if not kind.isalpha():
        raise ValueError(f"{kind!r} is not a resource type")
    return resource_id if kind == resource_type else None


def _as_uuid(text: str | None) -> UUID | None:
    if text is None:
        return None
    try:
        return UUID(text)
    except ValueError:
        return None


def _uuid_reference(resource_type: str) -> _Parser:
    def parse(value: str, modifier: str | None, ctx: _Context) -> UUID | None:
        return _as_uuid(_reference_id(value, modifier, ctx, resource_type))

    return parse


def _text_reference(resource_type: str) -> _Parser:
    def parse(value: str, modifier: str | None, ctx: _Context) -> str | None:
        return _reference_id(value, modifier, ctx, resource_type)

    return parse


def _fhir_id(value: str) -> str:
    if not _FHIR_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a FHIR id ([A-Za-z0-9-.], 1 to 64 characters)")
    return value


def _uuid_id(value: str, modifier: str | None, ctx: _Context) -> UUID | None:
    return _as_uuid(_fhir_id(value))


def _text_id(value: str, modifier: str | None, ctx: _Context) -> str:
    return _fhir_id(value)


def _observation_key(value: str, modifier: str | None, ctx: _Context) -> ObservationKey | None:
    try:
        return parse_observation_id(_fhir_id(value))
    except InvalidInputError:
        return None  # a FHIR id, but not one of ours: no such Observation


def _identifier(system: str, convert: Callable[[str], Any] = str) -> _Parser:
    """An identifier token of one system: its value converted, or None if it cannot match."""

    def parse(value: str, modifier: str | None, ctx: _Context) -> Any:
        given_system, code = _split_token(value)
        if code is None or given_system not in (None, system):
            return None
        try:
            return convert(code)
        except ValueError:
            return None

    return parse


def _observation_identifier(value: str) -> UUID:
    if not value.startswith("urn:uuid:"):
        raise ValueError("not a urn:uuid")
    return UUID(value[len("urn:uuid:") :])


def _folded(text: str) -> str:
    """Lower case without accents: FHIR string search is case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _string(value: str, modifier: str | None, ctx: _Context) -> StringMatch:
    if modifier == "exact":
        return StringMatch(value, "exact")
    return StringMatch(_folded(value), "contains" if modifier == "contains" else "starts")


# Observations: which stored metrics (and device types) carry which codes


def _observation_metrics(code: str) -> frozenset[str]:
    return frozenset({SYSTOLIC, DIASTOLIC}) if code == BLOOD_PRESSURE else frozenset({code})


def _code_table(
    codings: Callable[[str, str], Iterable[Code]],
) -> tuple[tuple[str, str, Code], ...]:
    """(observation code, device type, coding) for every pair the mapping can write."""
    return tuple(
        (code, device_type, coding)
        for code in sorted(OBSERVATION_CODES)
        for device_type in sorted(DEVICE_TYPES)
        for coding in codings(code, device_type)
    )


def _main_codings(code: str, device_type: str) -> Iterable[Code]:
    return BLOOD_PRESSURE_CODES if code == BLOOD_PRESSURE else metric_codes(code, device_type)


def _component_codings(code: str, device_type: str) -> Iterable[Code]:
    if code != BLOOD_PRESSURE:
        return ()
    return metric_codes(SYSTOLIC, device_type) + metric_codes(DIASTOLIC, device_type)


_MAIN_CODES = _code_table(_main_codings)
_COMPONENT_CODES = _code_table(_component_codings)
_CATEGORIES = _code_table(lambda code, _: (observation_category(code),))


def _metric_matches(pairs: Iterable[tuple[str, str]]) -> list[MetricMatch]:
    """(observation code, device type) pairs as MetricMatches, one per code; a code matched
    for every device type needs no device-type condition."""
    by_code: dict[str, set[str]] = {}
    for code, device_type in pairs:
        by_code.setdefault(code, set()).add(device_type)
    return [
        MetricMatch(
            _observation_metrics(code),
            None if types == set(DEVICE_TYPES) else frozenset(types),
        )
        for code, types in sorted(by_code.items())
    ]


def _coded(*tables: tuple[tuple[str, str, Code], ...]) -> _Parser:
    def parse(value: str, modifier: str | None, ctx: _Context) -> list[MetricMatch]:
        system, wanted = _split_token(value)
        return _metric_matches(
            (code, device_type)
            for table in tables
            for code, device_type, coding in table
            if _token_matches(coding, system, wanted)
        )

    return parse


def _device_type(value: str, modifier: str | None, ctx: _Context) -> list[str]:
    system, wanted = _split_token(value)
    return [
        device_type
        for device_type in DEVICE_TYPES
        if any(_token_matches(c, system, wanted) for c in device_type_codes(device_type))
    ]


def _device_status(value: str, modifier: str | None, ctx: _Context) -> str | None:
    system, code = _split_token(value)
    if system not in (None, "http://hl7.org/fhir/device-status"):
        return None
    return code if code in ("active", "inactive") else None


def _organisation_type(value: str, modifier: str | None, ctx: _Context) -> OrganisationTypeMatch:
    system, wanted = _split_token(value)
    kinds = frozenset(
        kind
        for kind, codes in ORGANISATION_TYPES.items()
        if any(_token_matches(c, system, wanted) for c in codes)
    )
    return OrganisationTypeMatch(kinds, _token_matches(AZIENDA_SANITARIA_LOCALE, system, wanted))


def _date(value: str, modifier: str | None, ctx: _Context) -> DateRange:
    return parse_date(value)


def _fixed_token(system: str, codes: Iterable[str]) -> _Parser:
    allowed = frozenset(codes)

    def parse(value: str, modifier: str | None, ctx: _Context) -> str | None:
        given_system, code = _split_token(value)
        if given_system not in (None, system) or code not in allowed:
            return None
        return code

    return parse


def _entity(value: str, modifier: str | None, ctx: _Context) -> EntityRef:
    base = ctx.base_url.rstrip("/") + "/"
    text = value[len(base) :] if value.startswith(base) else value
    parts = text.split("/")
    if len(parts) != 2 or not parts[0].isalpha():
        raise ValueError("an entity is Type/id")
    return EntityRef(parts[0], _fhir_id(parts[1]))


_ID_DOC = "the resource's id"

PARAMETERS: Mapping[str, tuple[SearchParameter, ...]] = MappingProxyType(
    {
        "Observation": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, _observation_key),
            SearchParameter(
                "patient",
                "reference",
                _spec("clinical-patient"),
                "Patient/[id] or [id]; `patient:missing=true` finds readings no enrolment "
                "covers yet (unassigned)",
                _uuid_reference("Patient"),
                frozenset({"missing", "Patient"}),
            ),
            SearchParameter(
                "subject",
                "reference",
                _spec("Observation-subject"),
                "as patient: subjects are always Patients",
                _uuid_reference("Patient"),
                frozenset({"missing", "Patient"}),
            ),
            SearchParameter(
                "device",
                "reference",
                _spec("Observation-device"),
                "Device/[device_id] or [device_id]",
                _text_reference("Device"),
                frozenset({"Device"}),
            ),
            SearchParameter(
                "code",
                "token",
                _spec("clinical-code"),
                "[system|]code of Observation.code, LOINC or IEEE 11073 MDC; also matches "
                "component codes, so 8480-6 and 8462-4 find blood-pressure panels (85354-9)",
                _coded(_MAIN_CODES, _COMPONENT_CODES),
            ),
            SearchParameter(
                "component-code",
                "token",
                _spec("Observation-component-code"),
                "[system|]code of Observation.component.code (blood-pressure panels)",
                _coded(_COMPONENT_CODES),
            ),
            SearchParameter(
                "combo-code",
                "token",
                _spec("Observation-combo-code"),
                "[system|]code of Observation.code or Observation.component.code",
                _coded(_MAIN_CODES, _COMPONENT_CODES),
            ),
            SearchParameter(
                "category",
                "token",
                _spec("Observation-category"),
                "vital-signs, laboratory or activity "
                "(http://terminology.hl7.org/CodeSystem/observation-category)",
                _coded(_CATEGORIES),
            ),
            SearchParameter(
                "date",
                "date",
                _spec("clinical-date"),
                "effectiveDateTime, with prefixes eq ne gt lt ge le sa eb; a value without "
                "a time zone is read in Europe/Rome, at its precision (2026-03-10: that day)",
                _date,
            ),
            SearchParameter(
                "identifier",
                "token",
                _spec("clinical-identifier"),
                f"{URI_SYSTEM}|urn:uuid:... (evaluated within the other criteria: give a "
                "patient or device too on large stores)",
                _identifier(URI_SYSTEM, _observation_identifier),
            ),
        ),
        "Patient": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, _uuid_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Patient-identifier"),
                f"{PATIENT_PSEUDONYM_SYSTEM}|[pseudonym, hex]",
                _identifier(PATIENT_PSEUDONYM_SYSTEM, bytes.fromhex),
            ),
            SearchParameter(
                "organization",
                "reference",
                _spec("Patient-organization"),
                "the managing provider: Organization/[id]",
                _uuid_reference("Organization"),
                frozenset({"Organization"}),
            ),
        ),
        "Device": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, _text_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Device-identifier"),
                f"{DEVICE_ID_SYSTEM}|[device_id]",
                _identifier(DEVICE_ID_SYSTEM),
            ),
            SearchParameter(
                "type",
                "token",
                _spec("Device-type"),
                "the catalogue's device type or its IEEE 11073 specialization",
                _device_type,
            ),
            SearchParameter(
                "organization",
                "reference",
                _spec("Device-organization"),
                "the owning start-up: Organization/[id]",
                _uuid_reference("Organization"),
                frozenset({"Organization"}),
            ),
            SearchParameter(
                "status", "token", _spec("Device-status"), "active or inactive", _device_status
            ),
        ),
        "Location": (
            SearchParameter("_id", "token", _spec("Resource-id"), "the ISTAT code", _text_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Location-identifier"),
                f"{ISTAT_MUNICIPALITY_SYSTEM}|[ISTAT code]",
                _identifier(ISTAT_MUNICIPALITY_SYSTEM),
            ),
            SearchParameter(
                "name",
                "string",
                _spec("Location-name"),
                "the municipality's name: starts with, ignoring case and accents; "
                ":exact and :contains",
                _string,
                frozenset({"exact", "contains"}),
            ),
        ),
        "Organization": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, _uuid_id),
            SearchParameter(
                "identifier",
                "token",
                _spec("Organization-identifier"),
                f"{FLS_SYSTEM}|[FLS 11 code] of an Azienda Sanitaria Locale",
                _identifier(FLS_SYSTEM),
            ),
            SearchParameter(
                "name",
                "string",
                _spec("Organization-name"),
                "starts with, ignoring case and accents; :exact and :contains",
                _string,
                frozenset({"exact", "contains"}),
            ),
            SearchParameter(
                "type",
                "token",
                _spec("Organization-type"),
                "HL7 organization-type (bus, prov, govt), ours (startup, provider, "
                "operator) or it-tipoEntita asl",
                _organisation_type,
            ),
        ),
        "AuditEvent": (
            SearchParameter("_id", "token", _spec("Resource-id"), _ID_DOC, _uuid_id),
            SearchParameter(
                "date",
                "date",
                _spec("AuditEvent-date"),
                "when recorded; prefixes as Observation's date",
                _date,
            ),
            SearchParameter(
                "agent",
                "reference",
                _spec("AuditEvent-agent"),
                "the calling organisation: Organization/[id]",
                _uuid_reference("Organization"),
                frozenset({"Organization"}),
            ),
            SearchParameter(
                "entity",
                "reference",
                _spec("AuditEvent-entity"),
                "what was read: Type/[id] (a search names the patients whose data it returned)",
                _entity,
            ),
            SearchParameter(
                "patient",
                "reference",
                _spec("AuditEvent-patient"),
                "a patient whose data was read or searched",
                _uuid_reference("Patient"),
                frozenset({"Patient"}),
            ),
            SearchParameter(
                "outcome",
                "token",
                _spec("AuditEvent-outcome"),
                "0 success, 4 refused or not found, 8 server failure",
                _fixed_token("http://hl7.org/fhir/audit-event-outcome", ("0", "4", "8", "12")),
            ),
            SearchParameter(
                "subtype",
                "token",
                _spec("AuditEvent-subtype"),
                "read, search-type or operation (http://hl7.org/fhir/restful-interaction)",
                _fixed_token(
                    "http://hl7.org/fhir/restful-interaction",
                    ("read", "search-type", "operation"),
                ),
            ),
            SearchParameter(
                "action",
                "token",
                _spec("AuditEvent-action"),
                "R (read) or E (search, operation)",
                _fixed_token("http://hl7.org/fhir/audit-event-action", ("R", "E")),
            ),
        ),
    }
)

#: _sort values each searchable type accepts; the first is the default
SORTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Observation": ("-date", "date"),
        "AuditEvent": ("-date", "date"),
        "Patient": ("_id",),
        "Device": ("_id",),
        "Location": ("_id",),
        "Organization": ("_id",),
    }
)


# -- the query ------------------------------------------------------------------------------


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
    #: queries.TOTAL_CAP) or accurate (always counted); `_summary=count` counts accurately
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
    ctx = _Context(base_url)
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


def _clause(parameter: SearchParameter, modifier: str | None, value: str, ctx: _Context) -> Clause:
    label = parameter.name + (f":{modifier}" if modifier else "")
    if modifier is not None and modifier not in parameter.modifiers:
        raise SearchParameterError(label, f"the modifier :{modifier} is not supported here")
    if modifier == "missing":
        if value not in ("true", "false"):
            raise SearchParameterError(label, "is true or false")
        return Clause(parameter.name, missing=value == "true")
    values: list[Any] = []
    for item in _split_unescaped(value, ","):
        # tokens split on '|' themselves, so they get their escapes
        text = item if parameter.type == "token" else _unescape(item)
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


def _split_unescaped(text: str, separator: str) -> list[str]:
    """`text` split on `separator` where it is not escaped with a backslash."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\|,$])", r"\1", text)


# -- dates ----------------------------------------------------------------------------------


def parse_date(value: str) -> DateRange:
    """A date parameter value: [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][zone]]]]."""
    prefix, text = "eq", value
    prefixed = _PREFIXED.fullmatch(value)
    if prefixed is not None:
        prefix, text = prefixed["prefix"], prefixed["rest"]
        if prefix not in DATE_PREFIXES:
            raise ValueError(
                f"{prefix!r} is not a supported prefix ({', '.join(sorted(DATE_PREFIXES))})"
            )
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a FHIR date (YYYY[-MM[-DD[Thh:mm[:ss][zone]]]])")
    lower, upper = _date_range(match)
    return DateRange(prefix, lower, upper)


def _date_range(match: re.Match[str]) -> tuple[datetime | None, datetime | None]:
    year = int(match["year"])
    month = int(match["month"] or 1)
    day = int(match["day"] or 1)
    if year < 1:
        raise ValueError("years start at 0001")
    if match["hour"] is None:
        start = datetime(year, month, day)  # a calendar date, zoned below
        if match["day"] is not None:
            end = _plus_days(start, 1)
        elif match["month"] is not None:
            end = _plus_months(start, 1)
        else:
            end = _plus_months(start, 12)
        return _zoned(start, PILOT_ZONE), _zoned(end, PILOT_ZONE) if end else None
    zone: tzinfo = PILOT_ZONE
    if match["zone"] == "Z":
        zone = UTC
    elif match["zone"] is not None:
        sign = -1 if match["zone"][0] == "-" else 1
        hours, minutes = int(match["zone"][1:3]), int(match["zone"][4:6])
        if hours > 14 or minutes > 59:
            raise ValueError(f"{match['zone']} is not a time zone offset")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    fraction = match["fraction"] or ""
    start = datetime(
        year,
        month,
        day,
        int(match["hour"]),
        int(match["minute"]),
        int(match["second"] or 0),
        int((fraction + "000000")[:6]),
    )
    if fraction:
        step = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
    elif match["second"] is not None:
        step = timedelta(seconds=1)
    else:
        step = timedelta(minutes=1)
    lower = _zoned(start, zone)
    try:
        upper = lower + step if lower is not None else _zoned(start + step, zone)
    except OverflowError:
        upper = None
    return lower, upper


def _plus_days(start: datetime, days: int) -> datetime | None:
    try:
        return start + timedelta(days=days)
    except OverflowError:
        return None


def _plus_months(start: datetime, months: int) -> datetime | None:
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return None if year > 9999 else start.replace(year=year, month=month)


def _zoned(moment: datetime, zone: tzinfo) -> datetime | None:
    """A wall-clock time in `zone`, in UTC; None when it falls outside datetime's range."""
    try:
        return moment.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# -- paging cursors -------------------------------------------------------------------------

CursorKey = tuple[str | int, ...]
_CURSOR_VERSION = 1
_MAX_CURSOR_LENGTH = 1024
_SIGNATURE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: after (or before, for a previous page) the row with this sort
    key; the total counted on the first page travels along."""

    after: bool
    key: CursorKey
    total: int | None


def fingerprint(resource_type: str, sort: str, used: Iterable[tuple[str, str]], caller: str) -> str:
    """What a cursor is bound to: the search (type, sort, criteria) and who asked."""
    digest = hashlib.sha256()
    for part in (resource_type, sort, caller, *(f"{n}={v}" for n, v in used)):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def encode_cursor(cursor: Cursor, bound_to: str, secret: bytes) -> str:
    payload = orjson.dumps(
        [_CURSOR_VERSION, cursor.after, list(cursor.key), cursor.total, bound_to]
    )
    signature = hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return _b64(payload) + "." + _b64(signature)


def decode_cursor(token: str, bound_to: str, secret: bytes) -> Cursor:
    """The cursor if this server signed it for this search and caller; else
    SearchParameterError (400): a cursor is never trusted, only checked."""
    invalid = SearchParameterError("_cursor", "not a page of this search; start from the first")
    if len(token) > _MAX_CURSOR_LENGTH or token.count(".") != 1:
        raise invalid
    encoded_payload, encoded_signature = token.split(".")
    try:
        payload, signature = _unb64(encoded_payload), _unb64(encoded_signature)
    except ValueError:
        raise invalid from None
    expected = hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    if not hmac.compare_digest(signature, expected):
        raise invalid
    try:
        version, after, key, total, bound = orjson.loads(payload)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise invalid from None
    well_formed = (
        version == _CURSOR_VERSION
        and isinstance(after, bool)
        and isinstance(key, list)
        and all(isinstance(part, str | int) and not isinstance(part, bool) for part in key)
        and (total is None or (isinstance(total, int) and not isinstance(total, bool)))
    )
    if not well_formed or bound != bound_to:
        raise invalid
    return Cursor(after, tuple(key), total)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """A time as integer microseconds since 1970 (cursor keys are JSON)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """The inverse of micros; SearchParameterError for a value outside datetime's range."""
    try:
        return _EPOCH + timedelta(microseconds=value)
    except OverflowError:
        raise SearchParameterError("_cursor", "not a page of this search") from None
