"""What every `/api/v1` route module shares: its error responses and its path parameters.

A path parameter that cannot name anything (not a device id, not a UUID) is answered 404
before any lookup, exactly like a well-formed one that names nothing, or something of another
organisation: a caller learns nothing from the shape of the answer.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends

from ehealthlab.contract.topics import is_valid_device_id
from ehealthlab.errors import NotFoundError

#: what any authenticated route may answer: no valid token (401), not this kind (403)
AUTH = (401, 403)


def device_id_in_path(device_id: str) -> str:
    """The device id, checked before any lookup, so `/`, `+` and `#` never reach a topic or a
    query."""
    if not is_valid_device_id(device_id):
        raise NotFoundError("no such device")
    return device_id


def uuid_in_path(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotFoundError(f"no such {what}") from None


def _enrolment_id(enrolment_id: str) -> UUID:
    return uuid_in_path(enrolment_id, "enrolment")


def _patient_id(patient_id: str) -> UUID:
    return uuid_in_path(patient_id, "patient")


def _alert_id(alert_id: str) -> UUID:
    return uuid_in_path(alert_id, "alert")


DeviceIdDep = Annotated[str, Depends(device_id_in_path)]
EnrolmentIdDep = Annotated[UUID, Depends(_enrolment_id)]
PatientIdDep = Annotated[UUID, Depends(_patient_id)]
AlertIdDep = Annotated[UUID, Depends(_alert_id)]
