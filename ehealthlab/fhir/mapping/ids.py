"""Resource ids and business identifiers of Observations: the same on every run, and
reversible to the stored rows.

A reading's key in the store is (device_id, metric, `at`); a blood-pressure panel's is
(device_id, `at`). The Observation id spells the key out, so a read by id is a primary-key
lookup with no mapping table:

    {device_id}.{code with '-' for '_'}.{`at` in microseconds since 1970-01-01T00:00Z}
    bpm-9e5ccae6b9b8242b.blood-pressure.1795590030000000

FHIR ids are at most 64 characters of [A-Za-z0-9.-]; device ids contain no '.', codes no
'.', and the gateway's device ids (type prefix + 16 hex digits, at most 22 characters) leave
room for every code and every time from year 1 to 9999. The business identifier is a name-
based UUID (RFC 4122 version 5) of the id: a URN a client can store and search without
escaping, as the FHIR examples do (system urn:ietf:rfc:3986).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.mapping.codes import BLOOD_PRESSURE, DIASTOLIC, FHIR_BASE, SYSTOLIC

MAX_ID_LENGTH = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: the name space of Observation identifiers: fixed by FHIR_BASE, so fixed forever
_OBSERVATION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{FHIR_BASE}/Observation")
_ID = re.compile(r"(?P<device>[a-z0-9][a-z0-9-]{2,63})\.(?P<code>[a-z0-9-]+)\.(?P<micros>-?[0-9]+)")
#: codes an Observation can have: the panel, and every metric that is not one of its parts
OBSERVATION_CODES = frozenset({BLOOD_PRESSURE} | (set(METRICS) - {SYSTOLIC, DIASTOLIC}))


class ObservationKey(NamedTuple):
    """What an Observation id stands for: the rows to read back."""

    device_id: str
    #: a catalogue metric, or BLOOD_PRESSURE for the panel of systolic and diastolic
    code: str
    at: datetime

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics whose readings (same device, same `at`) make this Observation."""
        return (SYSTOLIC, DIASTOLIC) if self.code == BLOOD_PRESSURE else (self.code,)


def observation_id(device_id: str, code: str, at: datetime) -> str:
    """The Observation id of a reading (code = its metric) or a panel (code = BLOOD_PRESSURE).

    InvalidInputError when the id would exceed FHIR's 64 characters, which only a device id
    longer than the gateway issues can cause.
    """
    micros = (at - _EPOCH) // _MICROSECOND
    resource_id = f"{device_id}.{code.replace('_', '-')}.{micros}"
    if len(resource_id) > MAX_ID_LENGTH:
        raise InvalidInputError(
            f"device id {device_id!r} is too long for a FHIR Observation id"
            f" ({len(resource_id)} > {MAX_ID_LENGTH} characters)"
        )
    return resource_id


def parse_observation_id(resource_id: str) -> ObservationKey:
    """The key an Observation id spells; InvalidInputError if it is not one of ours."""
    match = _ID.fullmatch(resource_id) if len(resource_id) <= MAX_ID_LENGTH else None
    code = match["code"].replace("-", "_") if match else ""
    if match is None or code not in OBSERVATION_CODES:
        raise InvalidInputError(f"{resource_id!r} is not an Observation id of this server")
    try:
        at = _EPOCH + int(match["micros"]) * _MICROSECOND
    except OverflowError:
        raise InvalidInputError(f"{resource_id!r} names a time outside years 1-9999") from None
    key = ObservationKey(match["device"], code, at)
    # one resource, one id: "...heart-rate.0072" is not the id of "...heart-rate.72"
    if observation_id(*key) != resource_id:
        raise InvalidInputError(f"{resource_id!r} is not an Observation id of this server")
    return key


def observation_identifier(resource_id: str) -> str:
    """The Observation's business identifier value (system urn:ietf:rfc:3986)."""
    return f"urn:uuid:{uuid.uuid5(_OBSERVATION_NAMESPACE, resource_id)}"
