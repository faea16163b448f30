"""A start-up's pages: its devices, one device's health, and their credentials.

The fleet list shows each device's status, newest measurement and recent rejections; a
device's page adds its last readings, rejects, messages and conformance verdict. The operator
sees the same list and pages for every device, read only: registering, rotating and revoking
are the start-up's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Query
from fastapi.responses import Response

from ehealthlab.api.auth import ApiContext, ContextDep
from ehealthlab.api.problems import status_of
from ehealthlab.errors import EhealthlabError, InvalidInputError, NotFoundError
from ehealthlab.gateway import device_routes, organisation_registry
from ehealthlab.gateway.routes_common import DeviceIdDep
from ehealthlab.portal import forms, render
from ehealthlab.portal.routes_common import (
    FormDep,
    PortalUser,
    StartupOrOperatorUser,
    StartupUser,
    notice_for,
    portal_router,
    see_other,
)
from ehealthlab.store.readings import latest_readings
from ehealthlab.store.rejections import rejection_counts

#: the windows a start-up may judge a device's conformance over, in minutes
CONFORMANCE_WINDOWS = {60: "the last hour", 1440: "the last 24 hours", 10080: "the last 7 days"}
#: readings looked up per device for the list, whose newest measurement time is shown
LAST_READINGS = 8
#: the fleet list counts each device's rejections over this look-back
REJECTS_SINCE = timedelta(hours=24)

router = portal_router()


def _devices_page(
    user: PortalUser, context: ApiContext, *, error: EhealthlabError | None = None,
    form: forms.Form | None = None, notice: str | None = None,
) -> Response:  # fmt: skip
    devices = device_routes.list_devices(user.principal, context)
    with context.transaction() as conn:
        ids = [d.device_id for d in devices]
        latest = latest_readings(conn, ids, LAST_READINGS)
        rejected = rejection_counts(conn, ids, datetime.now(UTC) - REJECTS_SINCE)
        owners = (
            {o.id: o.name for o in organisation_registry.list_organisations(conn)}
            if user.kind == "operator" else {}
        )  # fmt: skip
    return render.page(
        "devices.j2", status_of(error) if error else 200, user=user, devices=devices,
        latest=latest, rejected=rejected, owners=owners, form=form, error=error, notice=notice,
    )  # fmt: skip


@router.get("/devices")
def devices(
    user: StartupOrOperatorUser, context: ContextDep, done: Annotated[str | None, Query()] = None
) -> Response:
    return _devices_page(user, context, notice=notice_for(done))


@router.post("/devices")
def register_device(user: StartupUser, form: FormDep, context: ContextDep) -> Response:
    try:
        body = forms.device_create(form)
        credentials = device_routes.register_device(user.principal, body, context)
    except (InvalidInputError, NotFoundError) as exc:
        return _devices_page(user, context, error=exc, form=form)
    return render.page("credentials.j2", 201, user=user, credentials=credentials, rotated=False)


@router.get("/devices/{device_id}")
def device(
    user: StartupOrOperatorUser,
    context: ContextDep,
    device_id: DeviceIdDep,  # as the API: no lookup for what is no device id
    window: Annotated[int, Query()] = 60,
    done: Annotated[str | None, Query()] = None,
) -> Response:
    caller = user.principal
    minutes = window if window in CONFORMANCE_WINDOWS else 60
    shown = device_routes.get_device(caller, device_id, context)
    conformance = device_routes.device_conformance(
        caller=caller, device_id=device_id, context=context, minutes=minutes, from_=None, to=None
    )
    rejects = device_routes.device_rejects(caller, device_id, context, limit=50)
    messages = device_routes.device_messages(caller, device_id, context, limit=10)
    with context.transaction() as conn:
        readings = latest_readings(conn, [device_id], 20).get(device_id, [])
    return render.page(
        "device.j2", user=user, device=shown, conformance=conformance, rejects=rejects,
        messages=messages, readings=readings, window=minutes, windows=CONFORMANCE_WINDOWS,
        notice=notice_for(done),
    )  # fmt: skip


@router.post("/devices/{device_id}/rotate")
def rotate(
    user: StartupUser, form: FormDep, context: ContextDep, device_id: DeviceIdDep
) -> Response:
    credentials = device_routes.rotate_credentials(user.principal, device_id, context)
    return render.page("credentials.j2", user=user, credentials=credentials, rotated=True)


@router.post("/devices/{device_id}/revoke")
def revoke(
    user: StartupUser, form: FormDep, context: ContextDep, device_id: DeviceIdDep
) -> Response:
    device_routes.revoke_device(user.principal, device_id, context)
    return see_other(f"/portal/devices/{device_id}?done=revoked")
