"""FHIR Bulk Data export (`$export`, Bulk Data Access IG v2.0.0), the pure part: what a
kick-off asks for, what may be exported at each level, how the NDJSON files are named, the
completion manifest, and OperationOutcome bodies for the bulk and transaction routes.

Three levels, each a set of resource types the caller may be given:

- system (`/fhir/$export`): everything, unassigned readings included — the operator only;
- group (`/fhir/Group/{id}/$export`): a Group is a health provider's patients, and its id is
  the provider organisation's id: their Patients and Observations, the Devices enrolled with
  them and the Organizations those reference (the provider, the devices' start-ups);
- patient (`/fhir/Patient/$export`): every patient the caller may see, as the group level
  (a provider: its own Group; the operator: every provider's).

`observations_ndjson` turns readings sorted by (device, time) into Observations with bounded
memory: the systolic and diastolic readings of one cuff inflation are then adjacent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args
from uuid import UUID

from ehealthlab.contract.timestamps import TimestampError, parse_timestamp
from ehealthlab.errors import EhealthlabError, InvalidInputError
from ehealthlab.fhir.mapping.codes import DIASTOLIC, SYSTOLIC
from ehealthlab.fhir.mapping.fast import Json, observation_json
from ehealthlab.fhir.mapping.rows import BloodPressureReadings, ReadingRecord, as_utc

ExportLevel = Literal["system", "patient", "group"]
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
LEVELS: tuple[ExportLevel, ...] = get_args(ExportLevel)

#: what each level can export, in the order the files are written
LEVEL_TYPES: dict[ExportLevel, tuple[str, ...]] = {
    "system": ("Organization", "Location", "Device", "Patient", "Observation"),
    "patient": ("Organization", "Device", "Patient", "Observation"),
    "group": ("Organization", "Device", "Patient", "Observation"),
}
#: `_outputFormat` values the IG makes every server accept; NDJSON is the only format
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
NDJSON_MEDIA_TYPE = "application/fhir+ndjson"
#: kick-off parameters of the IG this server does not implement
UNSUPPORTED_PARAMETERS = frozenset({"_elements", "patient", "_typeFilter", "includeAssociatedData"})
#: resources per NDJSON file; a type with more gets several files (the IG allows it)
FILE_LINES = 200_000
#: how long the files of a completed export stay downloadable (the manifest's Expires)
EXPORT_LIFETIME = timedelta(hours=24)
#: the error file's type: the IG allows only OperationOutcome there
OUTCOME_TYPE = "OperationOutcome"
#: seconds a client is asked to wait between status requests
RETRY_AFTER_S = 2

_FILE_NAME = re.compile(
    r"(?P<type>Organization|Location|Device|Patient|Observation|OperationOutcome)"
    r"\.(?P<part>[1-9][0-9]{0,5})\.ndjson"
)


class UnsupportedError(InvalidInputError):
    """A valid request for something this server does not do (OperationOutcome code
    `not-supported`, status 400)."""


class TooManyExportsError(EhealthlabError):
    """An organisation already has as many exports in progress as it may (429)."""


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What a kick-off asks for, once its parameters were checked."""

    level: ExportLevel
    types: tuple[str, ...]
    #: only resources changed after this instant (None: all)
    since: datetime | None
    #: the provider organisation whose Group is exported (level group only)
    group_id: UUID | None = None
    #: parameters ignored because the client asked for `Prefer: handling=lenient`
    ignored: tuple[str, ...] = ()


def parse_kickoff(
    level: ExportLevel,
    params: Sequence[tuple[str, str]],
    *,
    prefer: str | None = None,
    group_id: UUID | None = None,
) -> ExportRequest:
    """Check a kick-off's query parameters (in order, repeats allowed, as the IG allows
    comma-separated values to be repeated). InvalidInputError / UnsupportedError say what is
    wrong; under `Prefer: handling=lenient` parameters this server does not support are
    ignored and listed instead."""
    lenient = "handling=lenient" in _preferences(prefer)
    supported = LEVEL_TYPES[level]
    types: list[str] = []
    since: datetime | None = None
    ignored: list[str] = []
    for name, value in params:
        if name == "_type":
            for resource_type in _split(value):
                if resource_type not in supported:
                    raise UnsupportedError(
                        f"_type {resource_type!r} is not exported at this level; "
                        f"use {', '.join(sorted(supported))}"
                    )
                if resource_type not in types:
                    types.append(resource_type)
        elif name == "_since":
            if since is not None:
                raise InvalidInputError("give _since once")
            since = parse_instant(value)
        elif name == "_outputFormat":
            if value not in OUTPUT_FORMATS:
                raise UnsupportedError(
                    f"_outputFormat {value!r} is not supported; use {NDJSON_MEDIA_TYPE}"
                )
        elif lenient:
            ignored.append(name)
        elif name in UNSUPPORTED_PARAMETERS:
            raise UnsupportedError(
                f"{name} is not supported by this server; leave it out, or send "
                "'Prefer: handling=lenient' to have it ignored"
            )
        else:
            raise InvalidInputError(
                f"unknown $export parameter {name!r}; this server takes _type, _since and "
                "_outputFormat"
            )
    chosen = tuple(t for t in supported if t in types) if types else supported
    return ExportRequest(level, chosen, since, group_id, tuple(dict.fromkeys(ignored)))


def prefers_async(prefer: str | None) -> bool:
    """Whether `Prefer` asks for `respond-async`. The IG lets a server treat a missing
    header as if it did; this one does, so only another explicit choice is refused."""
    preferences = _preferences(prefer)
    return "respond-async" in preferences or not any(p.startswith("respond-") for p in preferences)


def _preferences(prefer: str | None) -> set[str]:
    """The preferences of a Prefer header, separated by commas (RFC 7240) or, as clients
    also write them, semicolons."""
    if not prefer:
        return set()
    parts = prefer.replace(";", ",").split(",")
    return {part.strip().replace(" ", "").lower() for part in parts if part.strip()}


def _split(value: str) -> Iterator[str]:
    return (part.strip() for part in value.split(",") if part.strip())


def parse_instant(text: str) -> datetime:
    """A FHIR instant (date, time and offset). A '+' of the offset arrives as a space when a
    client forgets to percent-encode it in the query string; it is put back."""
    repaired = text.strip()
    if len(repaired) > 19 and repaired[-6] == " ":
        repaired = repaired[:-6] + "+" + repaired[-5:]
    try:
        return parse_timestamp(repaired)
    except TimestampError as exc:
        raise InvalidInputError(f"_since must be a FHIR instant: {exc}") from None


# -- files ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportFile:
    """One NDJSON file of a finished export."""

    type: str
    name: str
    count: int

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "count": self.count}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ExportFile:
        return cls(str(value["type"]), str(value["name"]), int(value["count"]))


def file_name(resource_type: str, part: int) -> str:
    """`Observation.1.ndjson`, `Observation.2.ndjson`, ...: a type's files in order."""
    name = f"{resource_type}.{part}.ndjson"
    if _FILE_NAME.fullmatch(name) is None:
        raise ValueError(f"no export file is named {name!r}")
    return name


def is_file_name(name: str) -> bool:
    """Whether `name` can be an export file's name (checked before it touches a path)."""
    return _FILE_NAME.fullmatch(name) is not None


def manifest(
    *,
    transaction_time: datetime,
    request_url: str,
    files: Iterable[ExportFile],
    file_url: Callable[[str], str],
) -> Json:
    """The completion manifest (IG v2 "Response - Complete Status"). Downloading needs the
    same bearer token as the kick-off, hence `requiresAccessToken`."""
    output: list[Json] = []
    errors: list[Json] = []
    for item in files:
        entry = {"type": item.type, "url": file_url(item.name), "count": item.count}
        (errors if item.type == OUTCOME_TYPE else output).append(entry)
    return {
        "transactionTime": _instant(transaction_time),
        "request": request_url,
        "requiresAccessToken": True,
        "output": output,
        "error": errors,
    }


def progress(status: JobStatus, written: int) -> str:
    """The `X-Progress` header of a job in progress (the IG wants fewer than 100 characters)."""
    if status == "queued":
        return "queued"
    return f"in progress: {written:,} resources written"


def ignored_outcomes(ignored: Sequence[str]) -> list[Json]:
    """The error file's OperationOutcomes for parameters ignored under handling=lenient."""
    return [
        operation_outcome(
            Issue(
                "warning",
                "not-supported",
                f"the kick-off parameter {name!r} is not supported and was ignored",
            )
        )
        for name in ignored
    ]


def _instant(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


# -- Observations from sorted readings -------------------------------------------------------


def observations_ndjson(readings: Iterable[ReadingRecord]) -> Iterator[Json]:
    """The Observations of `readings` (fast.py's JSON), which must be sorted by
    (device_id, at): a blood-pressure panel's readings are then next to each other, so only
    the panel being filled is held. The same Observations as `fast.observations_json` of the
    whole list, in another order."""
    key: tuple[str, datetime] | None = None
    systolic: ReadingRecord | None = None
    diastolic: ReadingRecord | None = None
    for reading in readings:
        metric = reading.metric
        if metric != SYSTOLIC and metric != DIASTOLIC:  # noqa: PLR1714 (the hot path)
            yield observation_json(reading)
            continue
        here = (reading.device_id, reading.at)
        if here != key:
            if systolic is not None or diastolic is not None:
                yield observation_json(BloodPressureReadings(systolic, diastolic))
            key, systolic, diastolic = here, None, None
        if metric == SYSTOLIC:
            systolic = systolic or reading
        else:
            diastolic = diastolic or reading
    if systolic is not None or diastolic is not None:
        yield observation_json(BloodPressureReadings(systolic, diastolic))


# -- OperationOutcome -------------------------------------------------------------------------

IssueSeverity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome issue: severity, an IssueType code and what was wrong."""

    severity: IssueSeverity
    #: http://hl7.org/fhir/issue-type (invalid, not-supported, not-found, forbidden, ...)
    code: str
    diagnostics: str
    #: FHIRPath of the element concerned, e.g. Bundle.entry[2].resource.valueQuantity
    expression: tuple[str, ...] = ()
    #: a coded reason: (system, code), e.g. the device contract's reason code
    details: tuple[str, str] | None = None

    def as_json(self) -> Json:
        issue: Json = {"severity": self.severity, "code": self.code}
        if self.details is not None:
            system, code = self.details
            issue["details"] = {"coding": [{"system": system, "code": code}]}
        issue["diagnostics"] = self.diagnostics
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(*issues: Issue) -> Json:
    """An OperationOutcome resource (R4) with these issues."""
    return {"resourceType": "OperationOutcome", "issue": [issue.as_json() for issue in issues]}
