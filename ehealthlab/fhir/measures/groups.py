"""What a MeasureReport is about: its `subject`. Pure.

A municipality's report is about its `Location` (the ISTAT code, mapping/fast.py); every
other group of indicators.md is a `Group` served here, minimal and definitional (`actual`
false: defined by a characteristic, not a list of members, which would be patient data):

| grouping | Group id | characteristic |
|---|---|---|
| all | `all` | none: every patient of the population |
| snai_class | `snai-class-{A..F}` | the SNAI class (`{base}/CodeSystem/snai-class`) |
| area | `area-inner`, `area-centre` | `{base}/CodeSystem/area` |
| startup | `startup-{organisation id}` | the start-up (`valueReference` Organization) |
| device_type | `device-type-{type, `_` as `-`}` | the device type's codings (mapping/codes.py) |
| mini_pilot | `mini-pilot-{id}` | the mini-pilot (`{base}/CodeSystem/mini-pilot`, code its id) |

`SUBJECT_SQL` writes the same subject in SQL (search/measure_reports.py), so a search by
`subject` is an equality; `subject_of` is its Python twin, which tests hold equal.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from ehealthlab.contract.catalogue import DEVICE_TYPES
from ehealthlab.fhir.mapping.codes import FHIR_BASE, SNAI_CLASS_SYSTEM, device_type_codes
from ehealthlab.fhir.mapping.rows import GroupRecord

Json = dict[str, Any]

#: Group.code and characteristic.code: the grouping of indicators.md
GROUPING_SYSTEM = f"{FHIR_BASE}/CodeSystem/evaluation-grouping"
AREA_SYSTEM = f"{FHIR_BASE}/CodeSystem/area"
MINI_PILOT_SYSTEM = f"{FHIR_BASE}/CodeSystem/mini-pilot"

GROUPINGS = {
    "all": "All patients",
    "municipality": "Municipality",
    "snai_class": "SNAI class",
    "area": "Inner area or centre",
    "startup": "Start-up",
    "device_type": "Device type",
    "mini_pilot": "Mini-pilot",
}
AREAS = {
    "inner": "Inner areas (SNAI classes D, E, F)",
    "centre": "Centres (SNAI classes A, B, C)",
}
_PREFIXES = {
    "snai_class": "snai-class-",
    "area": "area-",
    "startup": "startup-",
    "device_type": "device-type-",
    "mini_pilot": "mini-pilot-",
}
_SNAI = re.compile(r"[A-F]")

#: the subject of an evaluation group, in SQL over `grouping` and `key` (subject_of's twin)
SUBJECT_SQL = (
    "CASE {grouping}"
    " WHEN 'all' THEN 'Group/all'"
    " WHEN 'municipality' THEN 'Location/' || {key}"
    " WHEN 'device_type' THEN 'Group/device-type-' || replace({key}, '_', '-')"
    + "".join(
        f" WHEN '{grouping}' THEN 'Group/{prefix}' || {{key}}"
        for grouping, prefix in _PREFIXES.items()
        if grouping != "device_type"
    )
    + " END"
)


def subject_of(grouping: str, key: str) -> str:
    """`Location/{ISTAT}` for a municipality, else `Group/{id}`."""
    if grouping == "all":
        return "Group/all"
    if grouping == "municipality":
        return f"Location/{key}"
    if grouping == "device_type":
        key = key.replace("_", "-")
    return f"Group/{_PREFIXES[grouping]}{key}"


def parse_group_id(group_id: str) -> tuple[str, str] | None:  # noqa: PLR0911 - one per grouping
    """(grouping, key) of a Group id that can be one of ours, else None. Start-ups and
    mini-pilots are known by id only: whether they exist is the store's to say."""
    if group_id == "all":
        return "all", "all"
    for grouping, prefix in _PREFIXES.items():
        if not group_id.startswith(prefix):
            continue
        key = group_id[len(prefix) :]
        if grouping == "snai_class" and _SNAI.fullmatch(key):
            return grouping, key
        if grouping == "area" and key in AREAS:
            return grouping, key
        if grouping == "device_type" and key.replace("-", "_") in DEVICE_TYPES:
            return grouping, key.replace("-", "_")
        if grouping in ("startup", "mini_pilot"):
            try:
                return grouping, str(UUID(key))
            except ValueError:
                return None
    return None


def _coding(system: str, code: str, display: str) -> Json:
    return {"system": system, "code": code, "display": display}


def _characteristic(record: GroupRecord) -> Json | None:
    grouping, key = record.grouping, record.key
    value: Json
    if grouping == "snai_class":
        value = {"valueCodeableConcept": {"coding": [_coding(SNAI_CLASS_SYSTEM, key, record.name)]}}
    elif grouping == "area":
        value = {"valueCodeableConcept": {"coding": [_coding(AREA_SYSTEM, key, AREAS[key])]}}
    elif grouping == "startup":
        value = {"valueReference": {"reference": f"Organization/{key}", "display": record.name}}
    elif grouping == "device_type":
        codings = [_coding(c.system, c.code, c.display) for c in device_type_codes(key)]
        value = {"valueCodeableConcept": {"coding": codings}}
    elif grouping == "mini_pilot":
        value = {"valueCodeableConcept": {"coding": [_coding(MINI_PILOT_SYSTEM, key, record.name)]}}
    else:
        return None
    return {
        "code": {"coding": [_coding(GROUPING_SYSTEM, grouping, GROUPINGS[grouping])]},
        **value,
        "exclude": False,
    }


def group_json(record: GroupRecord) -> Json:
    """A minimal, definitional Group of patients (no members)."""
    resource: Json = {
        "resourceType": "Group",
        "id": record.id,
        "active": True,
        "type": "person",
        "actual": False,
        "code": {"coding": [_coding(GROUPING_SYSTEM, record.grouping, GROUPINGS[record.grouping])]},
        "name": record.name,
    }
    characteristic = _characteristic(record)
    if characteristic is not None:
        resource["characteristic"] = [characteristic]
    return resource


def static_group(grouping: str, key: str) -> GroupRecord | None:
    """The Groups whose name the code knows (all, areas, device types); None for those
    the store names (SNAI classes, start-ups, mini-pilots)."""
    group_id = subject_of(grouping, key).removeprefix("Group/")
    if grouping == "all":
        return GroupRecord(group_id, grouping, key, "All patients of the pilot")
    if grouping == "area":
        return GroupRecord(group_id, grouping, key, AREAS[key])
    if grouping == "device_type":
        return GroupRecord(group_id, grouping, key, DEVICE_TYPES[key].display)
    return None
