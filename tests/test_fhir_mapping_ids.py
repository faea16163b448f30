"""Observation ids and identifiers: stable between runs and releases, the same for the same
moment in any offset, reversible to the rows they name and never shared by different rows
(generated), and ids that are not ours refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fhir_mapping_fixtures import AT, DEVICE, GENERATED, cuff_measurement, device_ids, moments
from hypothesis import given
from hypothesis import strategies as st

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.errors import InvalidInputError
from ehealthlab.fhir.mapping import r4b
from ehealthlab.fhir.mapping.codes import BLOOD_PRESSURE
from ehealthlab.fhir.mapping.ids import (
    MAX_ID_LENGTH,
    observation_id,
    observation_identifier,
    parse_observation_id,
)

# -- ids and identifiers -------------------------------------------------------------------------


def test_ids_and_identifiers_do_not_change_between_runs_or_releases() -> None:
    """Pinned values: a client that stored these must find the same resources tomorrow."""
    panel, heart_rate = r4b.observations(cuff_measurement())
    assert panel.id == "bpm-9e5ccae6b9b8242b.blood-pressure.1795590030000000"
    assert heart_rate.id == "bpm-9e5ccae6b9b8242b.heart-rate.1795590030000000"
    assert panel.identifier[0].value == "urn:uuid:55f3c67d-56e5-5ae5-bb85-226be4010039"
    again = r4b.observations(cuff_measurement(received_at=AT + timedelta(days=1)))
    assert [o.identifier[0].value for o in again] == [
        panel.identifier[0].value,
        heart_rate.identifier[0].value,
    ]


def test_the_same_moment_in_another_offset_is_the_same_observation() -> None:
    utc = AT.astimezone(UTC)
    assert observation_id(DEVICE, "heart_rate", utc) == observation_id(DEVICE, "heart_rate", AT)


observation_codes = st.sampled_from(
    sorted({BLOOD_PRESSURE} | set(METRICS) - {"bp_systolic", "bp_diastolic"})
)


@GENERATED
@given(device_ids, observation_codes, moments)
def test_an_observation_id_names_its_rows(device_id: str, code: str, at: datetime) -> None:
    resource_id = observation_id(device_id, code, at)
    assert re.fullmatch(r"[A-Za-z0-9\-\.]{1,64}", resource_id)
    key = parse_observation_id(resource_id)
    assert key == (device_id, code, at)
    assert key.metrics == (("bp_systolic", "bp_diastolic") if code == BLOOD_PRESSURE else (code,))


@GENERATED
@given(
    st.tuples(device_ids, observation_codes, moments),
    st.tuples(device_ids, observation_codes, moments),
)
def test_different_rows_never_share_an_id_or_identifier(
    first: tuple[str, str, datetime], second: tuple[str, str, datetime]
) -> None:
    same_key = first[:2] == second[:2] and first[2] == second[2]
    first_id, second_id = observation_id(*first), observation_id(*second)
    assert (first_id == second_id) == same_key
    assert (observation_identifier(first_id) == observation_identifier(second_id)) == same_key


@pytest.mark.parametrize(
    "resource_id",
    [
        "",
        "blood-pressure",
        f"{DEVICE}.bp-systolic.1795590030000000",  # a panel part is never an Observation
        f"{DEVICE}.heartrate.1795590030000000",
        f"{DEVICE}.heart-rate.",
        f"{DEVICE}.heart-rate.17955900300000001795590030000000179559003000000",
        f"{DEVICE}.heart-rate.99999999999999999999",  # after year 9999
        f"Device/{DEVICE}.heart-rate.1",
        f"{DEVICE}.heart-rate.1.2",
        f"{DEVICE}.heart-rate.01795590030000000",  # not how the id is written
        f"{DEVICE}.heart-rate.-0",
    ],
)
def test_ids_that_are_not_ours_are_refused(resource_id: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_observation_id(resource_id)


def test_a_device_id_too_long_for_an_observation_id_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="too long"):
        observation_id("d" * 50, "body_temperature", AT)
    assert len(observation_id("d" * 22, "body_temperature", datetime(1, 1, 1, tzinfo=UTC))) <= (
        MAX_ID_LENGTH
    )
