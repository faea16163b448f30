"""A property test of /fhir search: any combination of parameter names, modifiers, prefixes,
values, `_count`, `_sort`, `_total`, `_summary` and paging cursors (real, tampered or
invented), by GET or by a form POSTed to `_search`, leniently or strictly, as each kind of
organisation, is answered with a Bundle or a 4xx whose body is an OperationOutcome — never a
5xx. Through the real application (conftest's `client`) over a small real pilot.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from gateway_fixtures import run_admin
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ehealthlab.fhir.search.parameters import PARAMETERS, SORTS
from ehealthlab.store.readings import ReadingRow, ReadingWriter

FHIR_JSON = "application/fhir+json"
T0 = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
#: examples in the suite; EHEALTHLAB_FUZZ_EXAMPLES raises it for a run by hand
EXAMPLES = int(os.environ.get("EHEALTHLAB_FUZZ_EXAMPLES", "150"))
KINDS = ("operator", "startup", "provider")
#: what a search may answer: a Bundle, or a refusal the client caused
REFUSALS = {400, 401, 403, 404, 406, 422}


@pytest.fixture(scope="module")
def pilot(client, settings) -> dict[str, Any]:
    """A start-up's cuff enrolled with a provider's patient, 40 readings stored; a token each."""
    operator = run_admin(settings, "admin", "bootstrap")["token"]
    tokens = {"operator": operator}

    def post(token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 201, answer.text
        made: dict[str, Any] = answer.json()
        return made

    for kind in ("startup", "provider"):
        tokens[kind] = post(operator, "/api/v1/organisations", {"kind": kind, "name": kind})[
            "token"
        ]
    device = post(
        tokens["startup"],
        "/api/v1/devices",
        {"type": "blood_pressure_monitor", "model": "BP-1", "serial": "fuzz"},
    )["device_id"]
    patient = post(tokens["provider"], "/api/v1/patients", {"identifier": "P-F", "label": "F"})[
        "id"
    ]
    post(tokens["provider"], "/api/v1/enrolments", {
        "patient_id": patient, "device_id": device, "municipality": "001272",
        "start": "2026-01-01", "end": None, "care_plan": {"bp_systolic": 1},
    })  # fmt: skip
    rows = [
        ReadingRow(
            device_id=device,
            metric=metric,
            at=at,
            value=value,
            measured_at=at,
            received_at=at + timedelta(seconds=5),
            seq=i,
            msg_id=f"m{i}",
            clock_offset_s=0.0,
            clock_corrected=False,
        )
        for i in range(20)
        for at in [T0 + timedelta(hours=i)]
        for metric, value in (("bp_systolic", 120.0 + i), ("bp_diastolic", 80.0))
    ]
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        ReadingWriter(conn).write(rows)
    return {"tokens": tokens, "device": device, "patient": patient}


# -- what is generated ------------------------------------------------------------------------

NAMES = sorted({p.name for ps in PARAMETERS.values() for p in ps} | {"_id", "unknown", "_has"})
MODIFIERS = [
    "", ":missing", ":exact", ":contains", ":not", ":text", ":above", ":below", ":in",
    ":of-type", ":Patient", ":Device", ":identifier", ":", "::", ":Ω",
]  # fmt: skip
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
DATES = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: d.isoformat()
    ),
    st.sampled_from(
        [
            "2026",
            "2026-03",
            "2026-03-02",
            "2026-03-02T07",
            "2026-13-40",
            "2026-03-02T07:00:00+25:00",
            "0000-00-00",
            "2026-03-02T07:00:00.1234567Z",
            "99999-01-01",
            "-2026-01-01",
            "2026-02-30",
            "now",
        ]
    ),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1e309", "-0", "0x10", "1_000", "١٢"]),
)


def references(pilot: dict[str, Any]) -> st.SearchStrategy[str]:
    ids = [pilot["patient"], pilot["device"], str(uuid.uuid4()), "x" * 300, "", "/", ".."]
    return st.one_of(
        st.sampled_from(ids),
        st.builds(
            lambda t, i: f"{t}/{i}",
            st.sampled_from(["Patient", "Device", "Nope", ""]),
            st.sampled_from(ids),
        ),
        st.sampled_from(ids).map(lambda i: f"urn:uuid:{i}"),
    )


def values(pilot: dict[str, Any]) -> st.SearchStrategy[str]:
    tokens = st.builds(
        lambda s, c: f"{s}|{c}",
        st.sampled_from(["http://loinc.org", "urn:oid:2.16.840.1.113883.6.1", "", "|"]),
        st.sampled_from(["8480-6", "85354-9", "", "|", "*"]),
    )
    one = st.one_of(
        TEXT, DATES, NUMBERS, tokens, references(pilot),
        st.builds(lambda p, v: p + v, st.sampled_from(PREFIXES), st.one_of(DATES, NUMBERS)),
        st.sampled_from(["true", "false", "null", "%00", "\x00", "a" * 5000]),
    )  # fmt: skip
    return st.lists(one, min_size=1, max_size=3).map(",".join)


def controls(cursor: str | None) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Result controls and paging: each maybe present, with a likely or a hostile value."""
    sorts = sorted({s for ss in SORTS.values() for s in ss} | {"-_id", "_lastUpdated", ""})
    forged = base64.urlsafe_b64encode(b'{"after": "x"}').decode()
    cursors = [forged, "", "....", "A" * 2000] + ([cursor, cursor[:-2] + "AA"] if cursor else [])
    options = [
        ("_count", st.one_of(st.integers(-5, 2000).map(str), TEXT)),
        ("_sort", st.one_of(st.sampled_from(sorts), TEXT)),
        ("_total", st.sampled_from(["none", "estimate", "accurate", "all", ""])),
        ("_summary", st.sampled_from(["count", "false", "data", "true", "text"])),
        ("_cursor", st.sampled_from(cursors)),
        ("_format", st.sampled_from(["json", "application/fhir+json", "xml", "text/html"])),
    ]
    return st.tuples(*[st.one_of(st.none(), value) for _, value in options]).map(
        lambda chosen: [(options[i][0], v) for i, v in enumerate(chosen) if v is not None]
    )


def assert_fhir_answer(answer: Any, statuses: Counter[int]) -> None:
    statuses[answer.status_code] += 1
    assert answer.status_code < 500, answer.text
    assert answer.headers["content-type"].startswith(FHIR_JSON), answer.headers
    if answer.status_code == 200:
        Bundle.model_validate(answer.json())
    else:
        assert answer.status_code in REFUSALS, answer.status_code
        OperationOutcome.model_validate(answer.json())


@pytest.fixture(scope="module")
def first_page_cursor(client, pilot) -> str | None:
    """A real `_cursor` from a second page, for the generator to replay and tamper with."""
    answer = client.get(
        "/fhir/Observation",
        params={"_count": "3"},
        headers={"Authorization": f"Bearer {pilot['tokens']['operator']}"},
    )
    for link in answer.json().get("link", []):
        if link["relation"] == "next":
            return dict(parse_qsl(urlsplit(link["url"]).query)).get("_cursor")
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_any_search_is_a_bundle_or_an_operation_outcome(client, pilot, first_page_cursor, kind):
    headers = {"Authorization": f"Bearer {pilot['tokens'][kind]}"}

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        resource_type=st.sampled_from([*sorted(PARAMETERS), "Nope"]),
        searched=st.lists(
            st.tuples(st.sampled_from(NAMES), st.sampled_from(MODIFIERS), values(pilot)),
            max_size=4,
        ),
        paging=controls(first_page_cursor),
        by_post=st.booleans(),
        strict=st.booleans(),
    )
    def search(resource_type, searched, paging, by_post, strict):
        params = [(name + modifier, value) for name, modifier, value in searched] + paging
        sent = dict(headers, Prefer="handling=strict") if strict else headers
        if by_post:
            form = dict(sent, **{"Content-Type": "application/x-www-form-urlencoded"})
            answer = client.post(
                f"/fhir/{resource_type}/_search", content=urlencode(params), headers=form
            )
        else:
            answer = client.get(f"/fhir/{resource_type}", params=params, headers=sent)
        assert_fhir_answer(answer, statuses)

    statuses: Counter[int] = Counter()
    search()
    print(f"\n{kind}: {sum(statuses.values())} searches, statuses {dict(sorted(statuses.items()))}")
