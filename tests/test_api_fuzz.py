"""Schemathesis against the OpenAPI of /api/v1, served for real (uvicorn on 127.0.0.1, the
module's database, the session's broker), as each kind of organisation: whatever it sends —
inputs the schema allows and inputs it forbids — the answer is never a 5xx.

Bounded for the suite (FUZZ_EXAMPLES per operation and generation mode, a fixed sequence of
examples); `EHEALTHLAB_FUZZ_EXAMPLES=200 pytest tests/test_api_fuzz.py -s` is the longer run
by hand whose figures docs/reliability-fuzzing.md records.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from api_fixtures import served
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation

from ehealthlab.gateway.admin import bootstrap_operator

#: examples per operation, kind of caller and generation mode in the suite
FUZZ_EXAMPLES = int(os.environ.get("EHEALTHLAB_FUZZ_EXAMPLES", "6"))
KINDS = ("operator", "startup", "provider")
TIMEOUT_S = 60.0  # bounds a hang only


@dataclass
class Fuzzed:
    """What one run sent and what came back, kept to say so in the failure and the docs."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def api(settings) -> Iterator[tuple[str, dict[str, str]]]:
    """The served API and a token for each kind of organisation, each owning a little data (a
    device, a patient) so that lists are not all empty."""
    with served(settings) as url:
        tokens = {"operator": bootstrap_operator(settings)["token"]}
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {tokens['operator']}"
            for kind in ("startup", "provider"):
                made = http.post(
                    f"{url}/api/v1/organisations",
                    json={"kind": kind, "name": f"fuzzed {kind}"},
                    timeout=TIMEOUT_S,
                )
                made.raise_for_status()
                tokens[kind] = made.json()["token"]
            device = http.post(
                f"{url}/api/v1/devices",
                json={"type": "thermometer", "model": "T1", "serial": "fuzz-1"},
                headers={"Authorization": f"Bearer {tokens['startup']}"},
                timeout=TIMEOUT_S,
            )
            device.raise_for_status()
            patient = http.post(
                f"{url}/api/v1/patients",
                json={"identifier": "FUZZED-1", "label": "fuzzed patient"},
                headers={"Authorization": f"Bearer {tokens['provider']}"},
                timeout=TIMEOUT_S,
            )
            patient.raise_for_status()
        yield url, tokens


def fuzz(url: str, token: str, examples: int) -> Fuzzed:
    """Every /api/v1 operation, `examples` cases each in each generation mode, over HTTP."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=TIMEOUT_S)
    fuzzed = Fuzzed()
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        for result in schema.include(path_regex="^/api/v1/").get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                send_cases(result.ok(), mode, url=url, http=http, examples=examples, fuzzed=fuzzed)
    return fuzzed


def send_cases(
    operation: APIOperation,
    mode: GenerationMode,
    *,
    url: str,
    http: requests.Session,
    examples: int,
    fuzzed: Fuzzed,
) -> None:
    """`examples` cases of one operation (a fixed sequence, no shrinking: a 5xx is kept as
    the curl command that reproduces it, not raised)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def send(case: Case) -> None:
        response = case.call(base_url=url, session=http, timeout=TIMEOUT_S)
        fuzzed.sent[operation.label] += 1
        fuzzed.statuses[response.status_code] += 1
        if response.status_code >= 500:
            fuzzed.server_errors.append(
                f"{response.status_code} {case.as_curl_command(base_url=url)}"
            )

    send()


@pytest.mark.parametrize("kind", KINDS)
def test_no_input_makes_the_api_answer_with_a_server_error(api, kind):
    url, tokens = api
    fuzzed = fuzz(url, tokens[kind], FUZZ_EXAMPLES)
    print(  # the figures of a run by hand (-s)
        f"\n{kind}: {len(fuzzed.sent)} operations, {sum(fuzzed.sent.values())} requests, "
        f"statuses {dict(sorted(fuzzed.statuses.items()))}"
    )
    assert len(fuzzed.sent) >= 20, fuzzed.sent  # every /api/v1 operation was reached
    assert fuzzed.server_errors == []


@pytest.mark.parametrize("day", ["0001-01-01", "1899-12-31", "3000-01-01", "9999-12-31"])
def test_an_evaluation_period_outside_the_representable_days_is_refused(api, day):
    """Found by the fuzzing: 0001-01-01 in Rome begins in year 0 in UTC (a 500 before)."""
    url, tokens = api
    query = {"from": day, "to": "2026-04-01"} if day < "2026" else {"from": "2026-03-01", "to": day}
    answer = requests.get(
        f"{url}/api/v1/evaluation",
        params=query,
        headers={"Authorization": f"Bearer {tokens['operator']}"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
