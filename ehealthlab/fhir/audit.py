"""The audit trail of /fhir: every read or search of patient data, kept as one row and
served to the operator as FHIR R4 AuditEvents.

Recording is one INSERT in the request's own transaction. That transaction would otherwise
write nothing, so its commit would wait for the WAL to reach the disk — the slowest part of
a search. It commits with `synchronous_commit = off` instead: PostgreSQL still writes the
row, in order, within a few hundred milliseconds, and a database crash can lose at most those
last events (an orderly stop loses none). The read itself is never held back by the audit.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from ehealthlab.fhir.queries import AuditRow
from ehealthlab.fhir.rows import as_utc
from ehealthlab.store.db import Connection

Json = dict[str, Any]
Interaction = Literal["read", "search-type", "operation"]

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"

_INTERACTION_DISPLAY = {"read": "read", "search-type": "search type", "operation": "operation"}
_REST = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
_SYSTEM_OBJECT = {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"}
_PERSON = {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"}
_PATIENT_ROLE = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_SOURCE = {
    "site": "ehealthlab",
    "observer": {"display": "ehealthlab FHIR API"},
    "type": [{"system": SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}],
}

_INSERT = """
INSERT INTO fhir_audit_events (organisation_id, token_id, action, interaction, resource_type,
    resource_id, operation, query, patient_ids, outcome, http_status, detail, results)
SELECT %s::uuid, %s::uuid, %s::char(1), %s::text, %s::text, %s::text, %s::text, %s::text,
       %s::uuid[], %s::smallint, %s::smallint, %s::text, %s::integer
-- set in the same statement, so recording costs one round trip: see the module docstring
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One read or search of patient data, as it is recorded."""

    organisation_id: UUID
    token_id: UUID
    interaction: Interaction
    resource_type: str
    http_status: int
    resource_id: str | None = None
    #: an operation's name, e.g. lastn
    operation: str | None = None
    #: the search parameters as the server understood them (a query string)
    query: str | None = None
    #: patients whose data was asked for or answered
    patient_ids: tuple[UUID, ...] = ()
    detail: str = ""
    results: int | None = None

    @property
    def action(self) -> str:
        """AuditEvent.action: R for a read, E (execute) for a search or operation."""
        return "R" if self.interaction == "read" else "E"

    @property
    def outcome(self) -> int:
        """AuditEvent.outcome: 0 success, 4 a refusal or bad request, 8 a server failure."""
        if self.http_status < 400:
            return 0
        return 4 if self.http_status < 500 else 8


def record(conn: Connection, entry: AuditEntry) -> None:
    """Write the entry in the caller's transaction."""
    conn.execute(
        _INSERT,
        (
            entry.organisation_id,
            entry.token_id,
            entry.action,
            entry.interaction,
            entry.resource_type,
            entry.resource_id,
            entry.operation,
            _text(entry.query),
            sorted(set(entry.patient_ids)),
            entry.outcome,
            entry.http_status,
            _text(entry.detail),
            entry.results,
        ),
    )


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; an error message may quote one from the request."""
    return None if value is None else value.replace("\x00", "\ufffd")


def audit_event_json(row: AuditRow) -> Json:
    """A recorded read or search as a FHIR R4 AuditEvent (IHE BALP's shape for RESTful
    activity: type rest, subtype the interaction, the caller as requesting agent)."""
    entities: list[Json] = []
    if row.resource_id is not None:
        entities.append(
            {
                "what": {"reference": f"{row.resource_type}/{row.resource_id}"},
                "type": _SYSTEM_OBJECT,
            }
        )
    else:
        entity: Json = {"type": _SYSTEM_OBJECT}
        if row.operation is not None:
            entity["description"] = f"{row.resource_type}/${row.operation}"
        else:
            entity["description"] = f"{row.resource_type} search"
        entity["query"] = base64.b64encode((row.query or "").encode()).decode("ascii")
        entities.append(entity)
    entities.extend(
        {"what": {"reference": f"Patient/{patient}"}, "type": _PERSON, "role": _PATIENT_ROLE}
        for patient in row.patient_ids
    )
    event: Json = {
        "resourceType": "AuditEvent",
        "id": str(row.id),
        "type": _REST,
        "subtype": [
            {
                "system": RESTFUL_INTERACTION,
                "code": row.interaction,
                "display": _INTERACTION_DISPLAY[row.interaction],
            }
        ],
        "action": row.action,
        "recorded": as_utc(row.recorded).isoformat().replace("+00:00", "Z"),
        "outcome": str(row.outcome),
    }
    if row.detail:
        event["outcomeDesc"] = row.detail
    event["agent"] = [
        {
            "who": {"reference": f"Organization/{row.organisation_id}"},
            "altId": str(row.token_id),
            "requestor": True,
        }
    ]
    event["source"] = _SOURCE
    event["entity"] = entities
    return event
