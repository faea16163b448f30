"""One value of a search parameter, read into what the SQL matches: a parser per kind of value,
`(value, modifier, context) -> typed value` (criteria.py).

A value that is well formed but names nothing we keep (an unknown code, a patient id that is
not one of ours) becomes None, or an empty list, and matches nothing; a malformed one raises
ValueError, which the parser (query.py) reports as a SearchParameterError naming the
parameter. Tokens keep their escapes until they are split on '|'.

Observation codes are matched against every coding the mapping can write for each (code,
device type) pair, so a LOINC code, an IEEE 11073 term or a component's code all find the
readings behind them (MetricMatch).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.mapping.codes import (
    AZIENDA_SANITARIA_LOCALE,
    BLOOD_PRESSURE,
    BLOOD_PRESSURE_CODES,
    DIASTOLIC,
    FHIR_BASE,
    ORGANISATION_TYPES,
    SYSTOLIC,
    Code,
    device_type_codes,
    metric_codes,
    observation_category,
)
from ehealthlab.fhir.mapping.ids import OBSERVATION_CODES, ObservationKey, parse_observation_id
from ehealthlab.fhir.search.criteria import (
    DateRange,
    EntityRef,
    MetricMatch,
    OrganisationTypeMatch,
    StringMatch,
)
from ehealthlab.fhir.search.dates import parse_date

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True, slots=True)
class Context:
    """What a value is read against: this server's base, which absolute references name."""

    base_url: str


Parser = Callable[[str, str | None, Context], Any]


# value parsers: (value, modifier, context) -> a typed value, or None when it cannot match


def _split_token(value: str) -> tuple[str | None, str | None]:
    """`system|code` → (system, code); `code` → (None, code): any system; `|code` → ('',
    code): no system; `system|` → (system, None): any code of the system. `value` still
    has its escapes (`\\|` is a '|' inside the code)."""
    parts = [unescape(part) for part in split_unescaped(value, "|")]
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


def _reference_id(value: str, modifier: str | None, ctx: Context, resource_type: str) -> str | None:
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


def uuid_reference(resource_type: str) -> Parser:
    def parse(value: str, modifier: str | None, ctx: Context) -> UUID | None:
        return _as_uuid(_reference_id(value, modifier, ctx, resource_type))

    return parse


def text_reference(resource_type: str) -> Parser:
    def parse(value: str, modifier: str | None, ctx: Context) -> str | None:
        return _reference_id(value, modifier, ctx, resource_type)

    return parse


def typed_reference(*resource_types: str) -> Parser:
    """A reference to one of several types, as (type, id); a bare id only with a type
    modifier (`subject:Location=001272`), since it could name any of them."""

    def parse(value: str, modifier: str | None, ctx: Context) -> tuple[str, str] | None:
        target = modifier if modifier and modifier[0].isupper() else None
        if target is None and "/" not in value:
            raise ValueError(f"name the type: {' or '.join(resource_types)}/[id]")
        for resource_type in (target,) if target else resource_types:
            if resource_type not in resource_types:
                raise ValueError(f"refers to {' or '.join(resource_types)} only")
            found = _reference_id(value, modifier, ctx, resource_type)
            if found is not None:
                return resource_type, found
        return None

    return parse


def canonical(*urls: str) -> Parser:
    """A canonical reference (`url[|version]`, or `Type/id` of this server): True when it
    names one of `urls`, None (no match) otherwise."""

    def parse(value: str, modifier: str | None, ctx: Context) -> bool | None:
        url = value.split("|", 1)[0]
        if "://" not in url and "/" in url:
            url = f"{FHIR_BASE}/{url}"
        return True if url in urls else None

    return parse


def canonical_url(value: str, modifier: str | None, ctx: Context) -> str:
    """A canonical URL, its `|version` dropped; `Type/id` stands for this server's."""
    url = value.split("|", 1)[0]
    if not url:
        raise ValueError("a canonical URL is url[|version]")
    if "://" not in url and "/" in url:
        url = f"{FHIR_BASE}/{url}"
    return url


def _fhir_id(value: str) -> str:
    if not _FHIR_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a FHIR id ([A-Za-z0-9-.], 1 to 64 characters)")
    return value


def uuid_id(value: str, modifier: str | None, ctx: Context) -> UUID | None:
    return _as_uuid(_fhir_id(value))


def text_id(value: str, modifier: str | None, ctx: Context) -> str:
    return _fhir_id(value)


def observation_key(value: str, modifier: str | None, ctx: Context) -> ObservationKey | None:
    try:
        return parse_observation_id(_fhir_id(value))
    except InvalidInputError:
        return None  # a FHIR id, but not one of ours: no such Observation


def identifier(system: str, convert: Callable[[str], Any] = str) -> Parser:
    """An identifier token of one system: its value converted, or None if it cannot match."""

    def parse(value: str, modifier: str | None, ctx: Context) -> Any:
        given_system, code = _split_token(value)
        if code is None or given_system not in (None, system):
            return None
        try:
            return convert(code)
        except ValueError:
            return None

    return parse


def urn_uuid(value: str) -> UUID:
    if not value.startswith("urn:uuid:"):
        raise ValueError("not a urn:uuid")
    return UUID(value[len("urn:uuid:") :])


def _folded(text: str) -> str:
    """Lower case without accents: FHIR string search is case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def string_match(value: str, modifier: str | None, ctx: Context) -> StringMatch:
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


MAIN_CODES = _code_table(_main_codings)
COMPONENT_CODES = _code_table(_component_codings)
CATEGORIES = _code_table(lambda code, _: (observation_category(code),))


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


def coded(*tables: tuple[tuple[str, str, Code], ...]) -> Parser:
    def parse(value: str, modifier: str | None, ctx: Context) -> list[MetricMatch]:
        system, wanted = _split_token(value)
        return _metric_matches(
            (code, device_type)
            for table in tables
            for code, device_type, coding in table
            if _token_matches(coding, system, wanted)
        )

    return parse


def device_types(value: str, modifier: str | None, ctx: Context) -> list[str]:
    system, wanted = _split_token(value)
    return [
        device_type
        for device_type in DEVICE_TYPES
        if any(_token_matches(c, system, wanted) for c in device_type_codes(device_type))
    ]


def device_status(value: str, modifier: str | None, ctx: Context) -> str | None:
    system, code = _split_token(value)
    if system not in (None, "http://hl7.org/fhir/device-status"):
        return None
    return code if code in ("active", "inactive") else None


def organisation_type(value: str, modifier: str | None, ctx: Context) -> OrganisationTypeMatch:
    system, wanted = _split_token(value)
    kinds = frozenset(
        kind
        for kind, codes in ORGANISATION_TYPES.items()
        if any(_token_matches(c, system, wanted) for c in codes)
    )
    return OrganisationTypeMatch(kinds, _token_matches(AZIENDA_SANITARIA_LOCALE, system, wanted))


def date_range(value: str, modifier: str | None, ctx: Context) -> DateRange:
    return parse_date(value)


def fixed_token(system: str, codes: Iterable[str]) -> Parser:
    allowed = frozenset(codes)

    def parse(value: str, modifier: str | None, ctx: Context) -> str | None:
        given_system, code = _split_token(value)
        if given_system not in (None, system) or code not in allowed:
            return None
        return code

    return parse


def entity(value: str, modifier: str | None, ctx: Context) -> EntityRef:
    base = ctx.base_url.rstrip("/") + "/"
    text = value[len(base) :] if value.startswith(base) else value
    parts = text.split("/")
    if len(parts) != 2 or not parts[0].isalpha():
        raise ValueError("an entity is Type/id")
    return EntityRef(parts[0], _fhir_id(parts[1]))


def split_unescaped(text: str, separator: str) -> list[str]:
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


def unescape(text: str) -> str:
    return re.sub(r"\\([\\|,$])", r"\1", text)
