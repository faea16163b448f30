"""`POST /fhir` refusing what it cannot take, against a real PostgreSQL and Mosquitto: only
start-ups deliver Bundles, and a malformed Bundle (or one in another media type, or any
generated one) is refused whole with an OperationOutcome, never a 500."""

from __future__ import annotations

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir_bundles import bundle, mangled_bundles, post, statuses
from gateway_fixtures import cast
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from ehealthlab.fhir.transaction.bundle import MAX_ENTRIES

__all__ = ["cast"]

# -- who may post --------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("p", 403), ("operator", 403), ("nobody", 401)])
def test_only_start_ups_deliver_bundles(client, cast, who, status):
    headers = {} if who == "nobody" else cast.h(who)
    answer = post(client, headers, bundle())
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("application/fhir+json")
    OperationOutcome.model_validate(answer.json())


def test_an_empty_bundle_is_an_empty_response(client, cast):
    assert statuses(post(client, cast.h("a"), bundle())) == []


# -- malformed Bundles: 400 with an OperationOutcome, never 500 --------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "structure"),
        (b"{", 400, "structure"),
        (b"\xff\xfe", 400, "structure"),
        (b"[]", 400, "structure"),
        (b'{"resourceType": "Observation"}', 400, "structure"),
        (b'{"resourceType": "Bundle", "type": "searchset"}', 400, "not-supported"),
        (b'{"resourceType": "Bundle", "type": "transaction", "entry": {}}', 400, "structure"),
        (b'{"resourceType": "Bundle", "type": "batch", "timestamp": "yesterday"}', 400, "value"),
        (
            b'{"resourceType": "Bundle", "type": "batch", "identifier": {"value": 1}}',
            400,
            "structure",
        ),
        (orjson.dumps(bundle(*[{}] * (MAX_ENTRIES + 1))), 413, "too-costly"),
        (
            b'{"resourceType": "Bundle", "type": "batch", "x": "' + b"a" * (5 << 20) + b'"}',
            413,
            "too-costly",
        ),
    ],
)
def test_malformed_bundles_are_refused_whole(client, cast, body, status, code):
    answer = post(client, cast.h("a"), body)
    assert answer.status_code == status, answer.text
    assert OperationOutcome.model_validate(answer.json()).issue[0].code == code


def test_a_bundle_in_another_media_type_is_415(client, cast):
    answer = client.post(
        "/fhir",
        content=b"<Bundle/>",
        headers={**cast.h("a"), "Content-Type": "application/fhir+xml"},
    )
    assert answer.status_code == 415
    OperationOutcome.model_validate(answer.json())


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=mangled_bundles())
def test_no_bundle_makes_the_server_fail(client, cast, body):
    answer = post(client, cast.h("b"), body)
    assert answer.status_code in (200, 400, 413), answer.text
    document = answer.json()
    if answer.status_code == 200:
        Bundle.model_validate(document)
    else:
        OperationOutcome.model_validate(document)
