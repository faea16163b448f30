"""SUS responses in the store (table `sus_responses`, migration 0018): a checked CSV file
imported all or nothing, and one response posted through FHIR.

What only the store knows is checked here, for every row at once, before anything is
written: that each patient and each municipality exists. A response's population is fixed as
it is stored (indicators.md, "Populations never mix"): a patient's response is simulated
exactly when the patient's provider is; a response without a patient takes the population its
importer declares (`--population`, real by default).

Functions take one connection and write inside `conn.transaction()`: on a connection already
in a transaction they are part of it, otherwise they commit on success; either way a file is
never half imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal
from uuid import UUID

from ehealthlab.evaluation.sus import Problem, Respondent, SusFileError, SusResponse, sus_score
from ehealthlab.store.db import Connection

Population = Literal["real", "simulated"]
POPULATIONS: tuple[Population, ...] = ("real", "simulated")
Source = Literal["csv", "fhir"]

_INSERT = (
    "INSERT INTO sus_responses (answered_on, respondent, patient_id, municipality, items,"
    " score, simulated, source, organisation_id)"
    " VALUES (%s, %s, %s, %s, %s::smallint[], %s, %s, %s, %s)"
)


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import stored, by population."""

    real: int
    simulated: int

    @property
    def total(self) -> int:
        return self.real + self.simulated


@dataclass(frozen=True, slots=True)
class PatientContext:
    """What a response about a patient takes from the store."""

    patient_id: UUID
    #: the provider that registered the patient
    organisation_id: UUID
    simulated: bool
    #: the municipality of the enrolment active on the day asked about (None: no enrolment)
    municipality: str | None


def import_responses(
    conn: Connection,
    responses: Sequence[SusResponse],
    *,
    population: Population = "real",
    source: str = "",
) -> ImportReport:
    """Store every response of a file, or none: SusFileError names each line whose patient
    or municipality the store does not know."""
    if population not in POPULATIONS:
        raise ValueError(f"population {population!r}")
    patients = {r.patient_id for r in responses if r.patient_id is not None}
    municipalities = {r.municipality for r in responses}
    with conn.transaction():
        simulated_by_patient = {
            row[0]: bool(row[1])
            for row in conn.execute(
                "SELECT p.id, o.simulated FROM patients p"
                " JOIN organisations o ON o.id = p.organisation_id WHERE p.id = ANY(%s)",
                (list(patients),),
            )
        }
        known = {
            row[0]
            for row in conn.execute(
                "SELECT istat_code FROM municipalities WHERE istat_code = ANY(%s)",
                (list(municipalities),),
            )
        }
        problems: list[Problem] = []
        for response in responses:
            if response.patient_id is not None and response.patient_id not in simulated_by_patient:
                problems.append(
                    Problem(response.line, "patient_id", f"no patient {response.patient_id}")
                )
            if response.municipality not in known:
                problems.append(
                    Problem(
                        response.line,
                        "municipality",
                        f"{response.municipality} is no municipality of the Metropolitan "
                        "City of Turin",
                    )
                )
        if problems:
            raise SusFileError(source, problems)
        declared = population == "simulated"
        rows = []
        for response in responses:
            simulated = (
                declared
                if response.patient_id is None
                else simulated_by_patient[response.patient_id]
            )
            rows.append(_row(response, simulated, "csv", None))
        with conn.cursor() as cursor:
            cursor.executemany(_INSERT, rows)
    simulated_count = sum(1 for row in rows if row[6])
    return ImportReport(real=len(rows) - simulated_count, simulated=simulated_count)


def _row(
    response: SusResponse, simulated: bool, source: Source, organisation_id: UUID | None
) -> tuple[object, ...]:
    return (
        response.answered_on,
        response.respondent,
        response.patient_id,
        response.municipality,
        list(response.items),
        sus_score(response.items),
        simulated,
        source,
        organisation_id,
    )


def patient_context(conn: Connection, patient_id: UUID, day: date) -> PatientContext | None:
    """The patient's provider, population and municipality on `day` (its enrolment active
    that day; the latest if several), or None when there is no such patient."""
    row = conn.execute(
        "SELECT p.id, p.organisation_id, o.simulated,"
        " (SELECT e.municipality FROM enrolments e WHERE e.patient_id = p.id"
        "  AND e.start_date <= %(day)s AND (e.end_date IS NULL OR e.end_date >= %(day)s)"
        "  ORDER BY e.start_date DESC, e.created_at DESC LIMIT 1)"
        " FROM patients p JOIN organisations o ON o.id = p.organisation_id"
        " WHERE p.id = %(patient)s",
        {"patient": patient_id, "day": day},
    ).fetchone()
    if row is None:
        return None
    return PatientContext(row[0], row[1], bool(row[2]), row[3])


def organisation_simulated(conn: Connection, organisation_id: UUID) -> bool:
    """Whether CMTo admitted this organisation as simulated (False if there is none)."""
    row = conn.execute(
        "SELECT simulated FROM organisations WHERE id = %s", (organisation_id,)
    ).fetchone()
    return bool(row[0]) if row is not None else False


def municipality_exists(conn: Connection, istat_code: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM municipalities WHERE istat_code = %s)", (istat_code,)
    ).fetchone()
    return bool(row and row[0])


def store_response(
    conn: Connection,
    *,
    answered_on: date,
    respondent: Respondent,
    patient_id: UUID | None,
    municipality: str,
    items: Sequence[int],
    simulated: bool,
    organisation_id: UUID,
) -> UUID:
    """Store one response posted through FHIR by `organisation_id`; its id."""
    response = SusResponse(answered_on, respondent, patient_id, municipality, tuple(items))
    with conn.transaction():
        row = conn.execute(
            _INSERT + " RETURNING id", _row(response, simulated, "fhir", organisation_id)
        ).fetchone()
    if row is None:  # INSERT ... RETURNING always returns its row
        raise RuntimeError("the database returned no id for a stored SUS response")
    stored: UUID = row[0]
    return stored
