"""What a request of the read and search API leaves in the audit trail: a RequestAudit
gathers, while the request runs, what it read (the patients whose data it returned) and
how it ended, and hands the entry to the router's AuditWriter (audit.py), off the request
path. Only reads and searches of patient data are recorded, failures included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import psycopg
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.auth import Principal
from ehealthlab.errors import EhealthlabError
from ehealthlab.fhir import outcome
from ehealthlab.fhir.access import PATIENT_DATA
from ehealthlab.fhir.audit import AuditEntry, Interaction
from ehealthlab.fhir.mapping.rows import BloodPressureReadings
from ehealthlab.fhir.rest.runtime import FhirResources
from ehealthlab.fhir.search.observations import ObservationSource

log = logging.getLogger(__name__)


class RequestAudit:
    """What a request will record, if it reads patient data; failures are recorded too."""

    def __init__(
        self,
        request: Request,
        caller: Principal,
        resource_type: str,
        interaction: Interaction,
        *,
        resource_id: str | None = None,
        operation: str | None = None,
    ) -> None:
        self.enabled = resource_type in PATIENT_DATA
        resources = getattr(request.app.state, "fhir", None)
        self.writer = resources.audit if isinstance(resources, FhirResources) else None
        self.recorded = datetime.now(UTC)
        self.caller = caller
        self.resource_type = resource_type
        self.interaction: Interaction = interaction
        self.resource_id = resource_id
        self.operation = operation
        #: the search's parameters (as received, then as understood): AuditEntry.query
        self.query: Sequence[tuple[str, str]] | None = None
        self.patients: set[UUID] = set()

    def entry(self, status: int, detail: str, results: int | None = None) -> AuditEntry:
        return AuditEntry(
            organisation_id=self.caller.organisation_id,
            token_id=self.caller.token_id,
            interaction=self.interaction,
            resource_type=self.resource_type,
            http_status=status,
            resource_id=self.resource_id,
            operation=self.operation,
            query=None if self.query is None else urlencode(self.query),
            patient_ids=tuple(self.patients),
            detail=detail,
            results=results,
            recorded=self.recorded,
        )

    async def _record(self, entry: AuditEntry) -> None:
        if self.writer is not None and not self.writer.submit(entry):
            await run_in_threadpool(self.writer.write, entry)  # the queue is full

    async def success(self, results: int | None) -> None:
        if self.enabled:
            await self._record(self.entry(200, "", results))

    async def failure(self, exc: EhealthlabError) -> None:
        """Record a refused or failed request."""
        if not self.enabled:
            return
        status, _ = outcome.status_of(exc)
        try:
            await self._record(self.entry(status, str(exc)[:500]))
        except (OSError, psycopg.Error):
            log.exception("could not record the audit event of a failed %s", self.interaction)


async def written_trail(resources: FhirResources) -> None:
    """Before the operator reads the trail: every event queued so far is written."""
    if not await run_in_threadpool(resources.audit.flush):
        log.warning("reading the audit trail before its last events are written")


def patients_of(sources: Iterable[ObservationSource]) -> set[UUID]:
    patients = set()
    for source in sources:
        reading = source.principal if isinstance(source, BloodPressureReadings) else source
        if reading.patient_id is not None:
            patients.add(reading.patient_id)
    return patients


def named_patients(query_clauses: Iterable[Any], names: tuple[str, ...]) -> set[UUID]:
    return {
        value
        for clause in query_clauses
        if clause.name in names
        for value in clause.values
        if isinstance(value, UUID)
    }
