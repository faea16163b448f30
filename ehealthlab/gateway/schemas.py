"""Request and response bodies of the gateway API, as documented in its OpenAPI.

Requests refuse unknown fields (a typo such as `"serial_number"` is an error, not a silently
missing serial) and bound every string. Responses never carry a password or a token except
the one response that creates it (`DeviceCredentials`, `OrganisationCreated`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.topics import DEVICE_ID_PATTERN
from ehealthlab.gateway.pseudonyms import MAX_IDENTIFIER_LENGTH

#: no control characters in anything shown back to people or put in a log line
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: readings a day a care plan may ask for one metric (one a minute)
MAX_READINGS_PER_DAY = 1440


def _known_device_type(code: str) -> str:
    if code not in DEVICE_TYPES:
        raise ValueError(
            f"unknown device type {code!r}: use one of {', '.join(sorted(DEVICE_TYPES))}"
        )
    return code


def _known_metric(code: str) -> str:
    if code not in METRICS:
        raise ValueError(f"unknown metric {code!r}: use one of {', '.join(sorted(METRICS))}")
    return code


def _text(max_length: int, description: str, example: str) -> object:
    return Field(
        min_length=1,
        max_length=max_length,
        pattern=_PRINTABLE,
        description=description,
        examples=[example],
    )


DeviceTypeCode = Annotated[
    str,
    AfterValidator(_known_device_type),
    Field(
        description="a device type of the catalogue",
        json_schema_extra={"enum": sorted(DEVICE_TYPES)},
        examples=["blood_pressure_monitor"],
    ),
]
MetricCode = Annotated[
    str,
    AfterValidator(_known_metric),
    Field(json_schema_extra={"enum": sorted(METRICS)}),
]
DeviceId = Annotated[
    str,
    Field(
        pattern=f"^{DEVICE_ID_PATTERN}$",
        description="a device id given by the platform: 3 to 64 characters of a-z, 0-9 and '-'",
        examples=["bpm-3f9a0c1d2e4b5a69"],
    ),
]
MunicipalityCode = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{6}$",
        description="ISTAT code of a municipality of the Metropolitan City of Turin",
        examples=["001272"],
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# -- organisations ------------------------------------------------------------------------


class OrganisationCreate(_Request):
    """A start-up, a health provider, or another operator to admit to the pilot."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"kind": "startup", "name": "CardioSense S.r.l."}]}
    )

    kind: Literal["startup", "provider", "operator"]
    name: Annotated[str, _text(200, "unique among organisations of its kind", "ASL TO4")]
    fls_code: Annotated[
        str | None,
        Field(
            pattern=r"^[0-9]{6}$",
            description="a health provider's six-digit FLS code (Ministry of Health: region "
            "and health authority), its identifier in FHIR (system http://hl7.it/sid/fls)",
        ),
    ] = None

    simulated: Annotated[
        bool,
        Field(
            description="admitted as a simulator (rehearsals, load tests): its start-ups' "
            "devices are simulated — their data labelled so, their messages allowed to state "
            "a simulated receive time — and enrolled only for simulated providers' patients"
        ),
    ] = False

    @model_validator(mode="after")
    def _fls_only_for_providers(self) -> OrganisationCreate:
        if self.fls_code is not None and self.kind != "provider":
            raise ValueError("fls_code is for health providers (kind provider) only")
        return self


class OrganisationCreated(BaseModel):
    """The new organisation and its first API token (admin role), shown only here."""

    id: UUID
    kind: Literal["startup", "provider", "operator"]
    name: str
    token_id: UUID
    token: Annotated[str, Field(description="bearer token; store it now, it is not shown again")]


class Organisation(BaseModel):
    id: UUID
    kind: Literal["startup", "provider", "operator"]
    name: str
    created_at: datetime
    simulated: bool


class Me(BaseModel):
    """Whom the presented token speaks for."""

    organisation_id: UUID
    kind: Literal["startup", "provider", "operator"]
    name: str
    role: Literal["admin", "member"]
    token_id: UUID


# -- devices --------------------------------------------------------------------------------


class DeviceCreate(_Request):
    """A device a start-up registers; the platform chooses its id and MQTT password."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "blood_pressure_monitor",
                    "model": "BP-200",
                    "serial": "SN-000123",
                    "firmware": "1.4.2",
                }
            ]
        }
    )

    type: DeviceTypeCode
    model: Annotated[str, _text(100, "the start-up's model name", "BP-200")]
    serial: Annotated[str, _text(100, "unique per model within the start-up", "SN-000123")]
    firmware: Annotated[str | None, _text(100, "firmware version", "1.4.2")] = None


class MqttTopics(BaseModel):
    readings: Annotated[str, Field(description="publish readings here (QoS 1, not retained)")]
    status: Annotated[str, Field(description='publish {"state": "online"} retained; Will: offline')]
    feedback: Annotated[str, Field(description="subscribe: what was rejected, and why")]


class MqttCredentials(BaseModel):
    """How the device connects: client id and username are its device id."""

    host: str
    port: int
    tls: bool
    username: str
    password: Annotated[str, Field(description="shown only in this response; store it now")]
    client_id: str
    topics: MqttTopics


class DeviceCredentials(BaseModel):
    """A registered device and its MQTT credentials (at registration and rotation only)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "bpm-3f9a0c1d2e4b5a69",
                    "mqtt": {
                        "host": "127.0.0.1",
                        "port": 1883,
                        "tls": False,
                        "username": "bpm-3f9a0c1d2e4b5a69",
                        "password": "4mAq9lXb0b2...",
                        "client_id": "bpm-3f9a0c1d2e4b5a69",
                        "topics": {
                            "readings": "ehl/v1/devices/bpm-3f9a0c1d2e4b5a69/readings",
                            "status": "ehl/v1/devices/bpm-3f9a0c1d2e4b5a69/status",
                            "feedback": "ehl/v1/devices/bpm-3f9a0c1d2e4b5a69/feedback",
                        },
                    },
                }
            ]
        }
    )

    device_id: str
    mqtt: MqttCredentials


class Device(BaseModel):
    """A device as its start-up and the operator see it (never its password)."""

    device_id: str
    organisation_id: UUID
    type: str
    model: str
    serial: str
    firmware: str | None
    simulated: bool
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None
    status: Annotated[
        Literal["online", "offline", "never_seen"],
        Field(description="from the retained status topic and the Last Will"),
    ]
    status_at: Annotated[datetime | None, Field(description="when the status last changed")]
    last_seen: Annotated[
        datetime | None, Field(description="when a status message last arrived from it")
    ]
    credentials_set_at: Annotated[
        datetime | None,
        Field(description="when its password was last set (registration or rotation)"),
    ]


class Reject(BaseModel):
    """A rejected reading (or, with `index` null, a whole rejected message)."""

    received_at: datetime
    reason: Annotated[str, Field(description="a reason code of the device contract")]
    detail: str
    seq: int | None
    msg_id: str | None
    index: Annotated[int | None, Field(description="position in the message's `readings`")]
    metric: str | None
    at: datetime | None


class ReceivedMessage(BaseModel):
    """One readings message as ingest received it, and what became of its readings."""

    received_at: datetime
    msg_id: str | None
    qos: int
    readings: Annotated[int, Field(description="readings in the message")]
    accepted: Annotated[int, Field(description="stored")]
    duplicates: Annotated[int, Field(description="already stored: counted, not stored twice")]
    rejected: Annotated[int, Field(description="see /rejects for the reasons")]
    clock_offset_s: Annotated[float | None, Field(description="receive time - sent_at")]


class ConformanceCheck(BaseModel):
    """One point of the device contract, as the device met it (or not) in the window."""

    id: str
    title: str
    verdict: Annotated[
        Literal["pass", "warn", "fail", "not_observed"],
        Field(description="not_observed: nothing in the window exercised this point"),
    ]
    summary: str
    details: list[str]
    advice: Annotated[str | None, Field(description="what to change, when something is wrong")]


class ConformanceReport(BaseModel):
    """A device's behaviour over a window, judged against the device contract."""

    device_id: str
    window_from: datetime
    window_to: datetime
    verdict: Annotated[
        Literal["conformant", "not_conformant", "not_enough_observed"],
        Field(description="conformant: no check failed and the essential ones were observed"),
    ]
    checks: list[ConformanceCheck]


# -- patients and enrolments ----------------------------------------------------------------


class PatientCreate(_Request):
    """A patient of the provider, kept pseudonymous: the identifier is stored only as a keyed
    hash; the label is what the provider's staff see."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"identifier": "RSSMRA50A01L219X", "label": "M.R. 1950"}]}
    )

    identifier: Annotated[
        str,
        _text(
            MAX_IDENTIFIER_LENGTH,
            "the provider's own identifier (e.g. codice fiscale); case and surrounding spaces "
            "do not matter; never stored in clear",
            "RSSMRA50A01L219X",
        ),
    ]
    label: Annotated[str, _text(200, "a display label chosen by the provider", "M.R. 1950")]


class PatientCreated(BaseModel):
    id: UUID


class EnrolmentCreate(_Request):
    """Ties a patient to a device from `start` (to `end`, both included)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "patient_id": "0b6f2d4e-3c1a-4f5e-9d7c-2a1b3c4d5e6f",
                    "device_id": "bpm-3f9a0c1d2e4b5a69",
                    "municipality": "001003",
                    "start": "2026-01-01",
                    "end": None,
                    "care_plan": {"bp_systolic": 2, "bp_diastolic": 2},
                }
            ]
        }
    )

    patient_id: UUID
    device_id: DeviceId
    municipality: MunicipalityCode
    start: date
    end: Annotated[date | None, Field(description="last day included; null: open")] = None
    care_plan: Annotated[
        dict[MetricCode, Annotated[int, Field(strict=True, ge=1, le=MAX_READINGS_PER_DAY)]],
        Field(
            min_length=1,
            max_length=len(METRICS),
            description="readings per day expected for each metric the device measures",
        ),
    ]

    @model_validator(mode="after")
    def _end_not_before_start(self) -> EnrolmentCreate:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class EnrolmentCreated(BaseModel):
    id: UUID
    attributed_readings: Annotated[
        int, Field(description="readings received earlier that this enrolment now covers")
    ]


class EnrolmentEnd(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"end": "2026-06-30"}]})

    end: Annotated[date, Field(description="last day of the enrolment, included")]


class Enrolment(BaseModel):
    id: UUID
    patient_id: UUID
    device_id: str
    municipality: str
    start: date
    end: date | None
    care_plan: dict[str, int]
    created_at: datetime


class Patient(BaseModel):
    id: UUID
    label: str
    created_at: datetime
    enrolments: list[Enrolment]


# -- alerts ---------------------------------------------------------------------------------


class AlertReading(BaseModel):
    """The accepted reading that raised an alert."""

    device_id: str
    metric: str
    value: Annotated[float, Field(description="in the metric's canonical unit")]
    at: datetime
    measured_at: Annotated[datetime, Field(description="clock-corrected time of measurement")]


class Alert(BaseModel):
    """A clinical alert: at most one per patient, rule and day of measurement."""

    id: UUID
    patient_id: UUID
    rule: Annotated[str, Field(description="e.g. bp_systolic_high, spo2_low, weight_gain")]
    day: Annotated[date, Field(description="Europe/Rome day of measurement")]
    raised_at: Annotated[datetime, Field(description="receive time of the reading")]
    acknowledged_at: datetime | None
    reading: AlertReading
