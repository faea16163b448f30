"""`/api/v1/alerts`: the clinical alerts ingest raised, and their acknowledgement.

A provider lists and acknowledges its own patients' alerts; the operator lists everyone's.
Listing is audited as a read of patient data. The first acknowledgement's time stays: the
response time is measured from it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from ehealthlab.api.auth import ContextDep, ProviderDep, ProviderOrOperatorDep
from ehealthlab.api.problems import responses
from ehealthlab.errors import NotFoundError
from ehealthlab.gateway import schemas
from ehealthlab.gateway.audit import audit_read
from ehealthlab.gateway.routes_common import AUTH, AlertIdDep
from ehealthlab.store import alerts as store_alerts
from ehealthlab.store.alerts import StoredAlert

router = APIRouter(prefix="/api/v1")


def _alert_view(alert: StoredAlert) -> schemas.Alert:
    return schemas.Alert(
        id=alert.id,
        patient_id=alert.patient_id,
        rule=alert.rule,
        day=alert.day,
        raised_at=alert.raised_at,
        acknowledged_at=alert.acknowledged_at,
        reading=schemas.AlertReading(
            device_id=alert.device_id,
            metric=alert.metric,
            value=alert.value,
            at=alert.at,
            measured_at=alert.measured_at,
        ),
    )


@router.get(
    "/alerts",
    tags=["alerts"],
    summary="Clinical alerts: a provider's own patients', or all for the operator",
    description="Newest first. `status=open` lists those not acknowledged yet.",
    responses=responses(*AUTH, 422),
)
def list_alerts(
    caller: ProviderOrOperatorDep,
    context: ContextDep,
    status: Annotated[Literal["open", "all"], Query(description="open or all")] = "all",
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 200,
) -> list[schemas.Alert]:
    organisation = None if caller.kind == "operator" else caller.organisation_id
    with context.transaction() as conn:
        rows = store_alerts.list_alerts(conn, organisation, only_open=status == "open", limit=limit)
        audit_read(
            conn, caller, "Flag", f"GET /api/v1/alerts?status={status}&limit={limit}",
            {r.patient_id for r in rows}, results=len(rows),
        )  # fmt: skip
    return [_alert_view(row) for row in rows]


@router.post(
    "/alerts/{alert_id}/ack",
    tags=["alerts"],
    summary="Acknowledge an alert of one of the provider's patients",
    description="Idempotent: the first acknowledgement's time stays, from which the response "
    "time is measured.",
    responses=responses(*AUTH, 404),
)
def acknowledge_alert(
    caller: ProviderDep, alert_id: AlertIdDep, context: ContextDep
) -> schemas.Alert:
    with context.transaction() as conn:
        row = store_alerts.acknowledge_alert(
            conn, alert_id, caller.organisation_id, caller.token_id
        )
    if row is None:
        raise NotFoundError("no such alert among your patients'")
    return _alert_view(row)
