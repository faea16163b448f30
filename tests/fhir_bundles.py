"""What the tests of `POST /fhir` share: transaction and batch Bundles of vital-signs
Observations as a FHIR-speaking device sends them (and, generated, mangled ones), and
posting them. The modules that post import gateway_fixtures' `cast` (start-ups a and b,
providers p and q).
"""

from __future__ import annotations

from typing import Any

import orjson
from fhir.resources.R4B.bundle import Bundle
from hypothesis import strategies as st

from ehealthlab.fhir.transaction.entry import READING_SEQ_SYSTEM

LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
CODES = {  # metric -> (system, code) as a device would send it
    "bp_systolic": (LOINC, "8480-6"),
    "bp_diastolic": (LOINC, "8462-4"),
    "heart_rate": (MDC, "149546"),
    "spo2": (LOINC, "59408-5"),
    "body_weight": (LOINC, "29463-7"),
}
FHIR = {"Content-Type": "application/fhir+json"}


# -- building Bundles ---------------------------------------------------------------------------


def quantity(value: Any, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def coding(metric: str) -> dict:
    system, code = CODES[metric]
    return {"coding": [{"system": system, "code": code}]}


def observation(
    device_id: str,
    seq: int,
    at: str,
    *,
    metric: str | None = None,
    value: Any = None,
    unit: str = "",
    components: list | None = None,
    **extra: Any,
) -> dict:
    """A vital-signs Observation as a FHIR-speaking device would send it."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": READING_SEQ_SYSTEM, "value": str(seq)}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}
        if components
        else coding(metric),
        "effectiveDateTime": at,
        "device": {"reference": f"Device/{device_id}"},
    }
    if components:
        resource["component"] = components
    else:
        resource["valueQuantity"] = quantity(value, unit)
    resource.update(extra)
    return resource


def panel(
    device_id: str,
    seq: int,
    at: str,
    systolic: Any,
    diastolic: Any,
    *,
    unit: str = "mm[Hg]",
    **extra: Any,
) -> dict:
    components = [
        {"code": coding("bp_systolic"), "valueQuantity": quantity(systolic, unit)},
        {"code": coding("bp_diastolic"), "valueQuantity": quantity(diastolic, unit)},
    ]
    return observation(device_id, seq, at, components=components, **extra)


def bundle(*resources: dict, kind: str = "transaction", **extra: Any) -> dict:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": r, "request": {"method": "POST", "url": "Observation"}} for r in resources
        ],
        **extra,
    }


def post(client, headers: dict[str, str], body: dict | bytes) -> Any:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/fhir", content=content, headers={**headers, **FHIR})


def statuses(answer) -> list[str]:
    assert answer.status_code == 200, answer.text
    Bundle.model_validate(answer.json())  # the response is valid FHIR
    return [entry["response"]["status"] for entry in answer.json()["entry"]]


# -- mangled Bundles, generated ------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = (
    "resourceType",
    "identifier",
    "status",
    "code",
    "effectiveDateTime",
    "device",
    "valueQuantity",
    "component",
    "subject",
)


@st.composite
def mangled_bundles(draw) -> bytes:
    """Bundles whose parts are replaced, at random, by arbitrary JSON."""
    d = draw(st.sampled_from(["bpm-0000000000000001", "bpm-x"]))
    resource = observation(
        d,
        draw(st.integers(0, 10**6)),
        "2026-03-01T08:00:00Z",
        metric="heart_rate",
        value=70,
        unit="/min",
    )
    for name in draw(st.sets(st.sampled_from(FIELDS), max_size=3)):
        resource[name] = draw(JSON)
    entry: Any = {"resource": resource, "request": {"method": "POST", "url": "Observation"}}
    if draw(st.booleans()):
        entry = draw(st.sampled_from([entry, {"resource": entry["resource"]}, draw(JSON)]))
    document: Any = bundle(kind=draw(st.sampled_from(["transaction", "batch", "collection"])))
    document["entry"] = [entry]
    if draw(st.booleans()):
        document[draw(st.sampled_from(["type", "entry", "timestamp", "identifier"]))] = draw(JSON)
    if draw(st.integers(0, 9)) == 0:
        document = draw(JSON)
    return orjson.dumps(document)
