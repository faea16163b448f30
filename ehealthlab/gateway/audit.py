"""Reads of patient data through /api/v1 go into the same audit trail as /fhir's.

The JSON API shows a provider its patients, enrolments and alerts (and the operator every
alert); each such read is one `fhir_audit_events` row, written in the read's own transaction
(`fhir/audit.record`: committed asynchronously, so the read waits for no flush), and served to
the operator as an AuditEvent like a FHIR read. `query` keeps the request as the API
understood it, so the trail says which endpoint was used.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from ehealthlab.api.auth import Principal
from ehealthlab.fhir.audit import AuditEntry, Interaction, record
from ehealthlab.store.db import Connection


def audit_read(
    conn: Connection,
    caller: Principal,
    resource_type: str,
    request: str,
    patients: Iterable[UUID],
    *,
    resource_id: UUID | None = None,
    results: int | None = None,
) -> None:
    """Record one read (a resource by id) or list (no id) of patient data."""
    interaction: Interaction = "read" if resource_id is not None else "search-type"
    record(
        conn,
        AuditEntry(
            organisation_id=caller.organisation_id,
            token_id=caller.token_id,
            interaction=interaction,
            resource_type=resource_type,
            http_status=200,
            resource_id=None if resource_id is None else str(resource_id),
            query=request,
            patient_ids=tuple(patients),
            results=results,
        ),
    )
