"""The rows the FHIR mapping reads: one record per resource, fields as the store's columns.

Named tuples, so a database row becomes a record without copying field by field
(`ReadingRecord(*row)`, or psycopg's `namedtuple_row`-style factories) and large result sets
stay cheap. Each record's docstring gives the SELECT that fills it; this module runs none.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import NamedTuple
from uuid import UUID

from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.mapping.codes import DIASTOLIC, SYSTOLIC

_PANEL_PARTS = frozenset({SYSTOLIC, DIASTOLIC})


class ReadingRecord(NamedTuple):
    """One stored reading with what its Observation references.

    SELECT r.device_id, d.device_type, r.metric, r.at, r.value, r.measured_at,
           r.received_at, r.clock_corrected, r.patient_id, p.organisation_id
    FROM readings r JOIN devices d USING (device_id)
    LEFT JOIN patients p ON p.id = r.patient_id
    """

    device_id: str
    device_type: str
    metric: str
    #: time of measurement as the device's clock gave it
    at: datetime
    #: in the metric's canonical UCUM unit
    value: float
    #: `at`, corrected when the device clock was wrong: the Observation's effective time
    measured_at: datetime
    received_at: datetime
    clock_corrected: bool
    #: None: unassigned (no enrolment covers the reading yet)
    patient_id: UUID | None
    #: the health provider that enrolled the patient (patients.organisation_id)
    provider_id: UUID | None


class BloodPressureReadings(NamedTuple):
    """The systolic and diastolic readings of one cuff inflation (same device, same `at`):
    one panel Observation. Either may be missing (rejected, or not sent)."""

    systolic: ReadingRecord | None
    diastolic: ReadingRecord | None

    @property
    def principal(self) -> ReadingRecord:
        """The reading whose times, patient and provider the panel takes: systolic if any."""
        principal = self.systolic or self.diastolic
        if principal is None:
            raise ValueError("a blood-pressure panel needs at least one reading")
        return principal


class PatientRecord(NamedTuple):
    """SELECT id, organisation_id, identifier_hash FROM patients

    The label is left out on purpose: providers write initials and birth years in it.
    """

    id: UUID
    #: the provider that registered the patient
    organisation_id: UUID
    #: HMAC-SHA256 of the provider's identifier (gateway/pseudonyms.py)
    identifier_hash: bytes


class DeviceRecord(NamedTuple):
    """SELECT device_id, organisation_id, device_type, model, serial, firmware, revoked_at
    FROM devices"""

    device_id: str
    #: the start-up that registered (owns) the device
    organisation_id: UUID
    device_type: str
    model: str
    serial: str
    firmware: str | None
    revoked_at: datetime | None


class OrganisationRecord(NamedTuple):
    """SELECT id, kind, name, fls_code FROM organisations

    `fls_code`: the 6-digit FLS 11 code of an Azienda Sanitaria Locale, when CMTo gave one.
    """

    id: UUID
    kind: str
    name: str
    fls_code: str | None = None


class MunicipalityRecord(NamedTuple):
    """SELECT istat_code, name, latitude, longitude, snai_class, snai_class_label
    FROM municipalities"""

    istat_code: str
    name: str
    latitude: float | None
    longitude: float | None
    snai_class: str
    snai_class_label: str


class _PanelSlot:
    """A panel being filled while grouping (mutable, unlike the record it becomes)."""

    __slots__ = ("diastolic", "systolic")

    def __init__(self) -> None:
        self.systolic: ReadingRecord | None = None
        self.diastolic: ReadingRecord | None = None


def group_measurements(
    readings: Iterable[ReadingRecord],
) -> list[ReadingRecord | BloodPressureReadings]:
    """One entry per Observation: systolic and diastolic of the same device and `at` paired,
    every other reading alone, in the order each first appears."""
    entries: list[ReadingRecord | _PanelSlot] = []
    panels: dict[tuple[str, datetime], _PanelSlot] = {}
    for reading in readings:
        if reading.metric not in _PANEL_PARTS:
            entries.append(reading)
            continue
        key = (reading.device_id, reading.at)
        slot = panels.get(key)
        if slot is None:
            slot = panels[key] = _PanelSlot()
            entries.append(slot)
        if reading.metric == SYSTOLIC:
            slot.systolic = slot.systolic or reading
        else:
            slot.diastolic = slot.diastolic or reading
    return [
        BloodPressureReadings(entry.systolic, entry.diastolic)
        if isinstance(entry, _PanelSlot)
        else entry
        for entry in entries
    ]


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; FHIR times carry an offset, so a naive time is refused."""
    if moment.tzinfo is None:
        raise InvalidInputError(f"{moment.isoformat()} has no time zone")
    return moment.astimezone(UTC)


class SusResponseRecord(NamedTuple):
    """SELECT q.id, q.answered_on, q.respondent, q.patient_id, q.municipality, q.items,
    q.score, q.simulated, q.organisation_id FROM sus_responses q

    One System Usability Scale response (migration 0018), as a QuestionnaireResponse.
    """

    id: UUID
    answered_on: date
    #: patient | carer | professional
    respondent: str
    #: None: a response about no patient (imported), counted in its municipality
    patient_id: UUID | None
    municipality: str
    items: list[int]
    score: float
    simulated: bool
    #: who posted it through FHIR; None for an imported response
    organisation_id: UUID | None


class MeasureReportRecord(NamedTuple):
    """One group of a current evaluation (migration 0017), as one MeasureReport: the SELECT
    is search/measure_reports.py's (current evaluations, each group a row).

    `figures` is the group's object of the evaluation's document (indicator id → a number,
    null, or {"value", "ci95"}), `min_group_patients` the document's threshold.
    """

    id: UUID
    population: str
    grouping: str
    period_from: date
    #: the day after the period (periods are [from, to))
    period_to: date
    computed_at: datetime
    group_key: str
    #: Location/{ISTAT code} or Group/{id}
    subject: str
    figures: dict[str, object] | None
    min_group_patients: int
    #: the group's label in the document (a municipality's name), if any
    label: str | None


class GroupRecord(NamedTuple):
    """A group the evaluation computes indicators for, as a FHIR Group: its id
    (measures/groups.py), grouping, key and name (looked up for start-ups, mini-pilots and
    SNAI classes)."""

    id: str
    grouping: str
    key: str
    name: str
