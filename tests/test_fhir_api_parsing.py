"""The FHIR REST API's parsing, pure, table-driven and generated: dates as ranges at their
precision, codes, references, handling, paging controls, signed cursors bound to their
search, and the scopes of each kind of organisation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fhir_world import LOINC, MDC, PARAMETER_NAMES, SAFE_TEXT, utc
from hypothesis import given, settings
from hypothesis import strategies as st

from ehealthlab.errors import PermissionDeniedError
from ehealthlab.fhir import access
from ehealthlab.fhir.search.criteria import MetricMatch, SearchParameterError
from ehealthlab.fhir.search.cursors import Cursor, decode_cursor, encode_cursor
from ehealthlab.fhir.search.dates import parse_date
from ehealthlab.fhir.search.parameters import PARAMETERS
from ehealthlab.fhir.search.query import parse_lastn, parse_search, strict_handling

ROME_WINTER = timezone(timedelta(hours=1))
SECRET = b"k" * 32


# -- pure: dates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "prefix", "lower", "upper"),
    [
        # a date without a zone is a day (month, year) in Europe/Rome
        ("2026-03-10", "eq", utc(2026, 3, 9, 23), utc(2026, 3, 10, 23)),
        ("ge2026-03-10", "ge", utc(2026, 3, 9, 23), utc(2026, 3, 10, 23)),
        ("2026-03", "eq", utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)),  # DST starts 29 March
        ("2026", "eq", utc(2025, 12, 31, 23), utc(2026, 12, 31, 23)),
        ("lt2026-07-01", "lt", utc(2026, 6, 30, 22), utc(2026, 7, 1, 22)),
        ("2026-03-10T12:00Z", "eq", utc(2026, 3, 10, 12), utc(2026, 3, 10, 12, 1)),
        ("2026-03-10T12:00:05Z", "eq", utc(2026, 3, 10, 12, 0, 5), utc(2026, 3, 10, 12, 0, 6)),
        (
            "2026-03-10T12:00:05.25+01:00",
            "eq",
            datetime(2026, 3, 10, 11, 0, 5, 250000, tzinfo=UTC),
            datetime(2026, 3, 10, 11, 0, 5, 260000, tzinfo=UTC),
        ),
        ("ne2026-03-10T12:00", "ne", utc(2026, 3, 10, 11), utc(2026, 3, 10, 11, 1)),
        ("sa2026-03-10T12:00-05:00", "sa", utc(2026, 3, 10, 17), utc(2026, 3, 10, 17, 1)),
        ("9999", "eq", datetime(9998, 12, 31, 23, tzinfo=UTC), None),
    ],
)
def test_dates_are_ranges_at_their_precision(value, prefix, lower, upper):
    parsed = parse_date(value)
    assert (parsed.prefix, parsed.lower, parsed.upper) == (prefix, lower, upper)


@pytest.mark.parametrize(
    "value",
    [
        "2026-3-10",
        "2026-13-01",
        "2026-02-30",
        "ap2026",
        "xx2026",
        "2026-03-10T25:00Z",
        "2026-03-10Z",
        "2026-03-10T12:00+15:00",
        "0000",
        "today",
        "",
        "2026-03-10T12",
    ],
)
def test_malformed_dates_are_refused(value):
    with pytest.raises((ValueError, SearchParameterError)):
        parse_date(value)


# -- pure: codes, references, handling --------------------------------------------------------

BP_MATCH = MetricMatch(frozenset({"bp_systolic", "bp_diastolic"}))


def observation_values(**params: str) -> tuple:
    query = parse_search("Observation", list(params.items()), base_url="http://x/fhir")
    return query.clauses[0].values


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("85354-9", {BP_MATCH}),
        (f"{LOINC}|85354-9", {BP_MATCH}),
        (f"{LOINC}|8480-6", {BP_MATCH}),
        ("8462-4", {BP_MATCH}),
        (f"{MDC}|150020", {BP_MATCH}),
        (f"{MDC}|150021", {BP_MATCH}),
        ("|85354-9", set()),
        ("http://snomed.info/sct|85354-9", set()),
        ("1234-5", set()),
        ("2708-6", {MetricMatch(frozenset({"spo2"}))}),
        ("59408-5", {MetricMatch(frozenset({"spo2"}))}),
        (
            "8867-4,2339-0",
            {MetricMatch(frozenset({"heart_rate"})), MetricMatch(frozenset({"blood_glucose"}))},
        ),
        (
            f"{MDC}|149546",
            {MetricMatch(frozenset({"heart_rate"}), frozenset({"blood_pressure_monitor"}))},
        ),
        (
            f"{MDC}|149530",
            {MetricMatch(frozenset({"heart_rate"}), frozenset({"pulse_oximeter"}))},
        ),
    ],
)
def test_codes_name_the_stored_metrics(code, expected):
    assert set(observation_values(code=code)) == expected


def test_a_system_alone_matches_every_code_of_it():
    metrics = {m for match in observation_values(code=f"{LOINC}|") for m in match.metrics}
    assert metrics == {
        "bp_systolic",
        "bp_diastolic",
        "heart_rate",
        "spo2",
        "respiratory_rate",
        "body_weight",
        "body_temperature",
        "blood_glucose",
        "steps",
    }
    assert observation_values(category="laboratory") == (MetricMatch(frozenset({"blood_glucose"})),)


def test_references_name_ids_of_their_type_only():
    patient = uuid.uuid4()
    for value in (str(patient), f"Patient/{patient}", f"http://x/fhir/Patient/{patient}"):
        assert observation_values(patient=value) == (patient,)
    assert observation_values(subject=f"Device/{patient}") == ()  # not a Patient: no match
    assert observation_values(patient="not-a-uuid") == ()  # a FHIR id, not one of ours
    assert observation_values(patient=f"https://elsewhere/fhir/Patient/{patient}") == ()
    assert observation_values(device="Device/bpm-1234") == ("bpm-1234",)


@pytest.mark.parametrize(
    ("resource_type", "params", "parameter"),
    [
        ("Observation", {"date": "2026-02-31"}, "date"),
        ("Observation", {"date": "ap2026"}, "date"),
        ("Observation", {"date": "yesterday"}, "date"),
        ("Observation", {"_count": "-1"}, "_count"),
        ("Observation", {"_count": "ten"}, "_count"),
        ("Observation", {"_count": "1e3"}, "_count"),
        ("Observation", {"_sort": "code"}, "_sort"),
        ("Observation", {"_sort": "-date,_id"}, "_sort"),
        ("Observation", {"_summary": "true"}, "_summary"),
        ("Observation", {"_total": "all"}, "_total"),
        ("Observation", {"patient": "Patient/a b"}, "patient"),
        ("Observation", {"patient": "Patient/x/_history/1"}, "patient"),
        ("Observation", {"code:text": "pressure"}, "code:text"),
        ("Observation", {"code": "a|b|c"}, "code"),
        ("Observation", {"patient:missing": "maybe"}, "patient:missing"),
        ("Observation", {"date": "2026\x00"}, "date"),
        ("Patient", {"_sort": "-date"}, "_sort"),
        ("Location", {"name:below": "Tor"}, "name:below"),
        ("AuditEvent", {"entity": "just-an-id"}, "entity"),
    ],
)
def test_malformed_parameters_name_the_parameter(resource_type, params, parameter):
    with pytest.raises(SearchParameterError) as refused:
        parse_search(resource_type, list(params.items()))
    assert refused.value.parameter == parameter


def test_unknown_parameters_are_ignored_unless_strict():
    query = parse_search("Observation", [("colour", "red"), ("code", "8867-4")])
    assert query.used == (("code", "8867-4"),) and query.ignored == ("colour",)
    with pytest.raises(SearchParameterError) as refused:
        parse_search("Observation", [("colour", "red")], strict=True)
    assert refused.value.parameter == "colour"
    assert strict_handling("respond-async, handling=strict") is True
    assert strict_handling("handling=lenient") is False
    assert strict_handling(None) is False


def test_paging_controls():
    assert parse_search("Observation", [("_count", "5000")]).count == 1000  # at most 1000
    assert parse_search("Observation", [("_count", "0")]).summary_count
    assert parse_search("Observation", [("_summary", "count")]).summary_count
    assert parse_search("Observation", []).sort == "-date"
    assert parse_search("Observation", [("code", "")]).clauses == ()  # empty: ignored
    lastn = parse_lastn([("patient", str(uuid.uuid4())), ("max", "3")])
    assert lastn.max == 3
    for params in (
        [("max", "3")],
        [("patient", "x"), ("max", "0")],
        [("patient", "x"), ("_count", "3")],
    ):
        with pytest.raises(SearchParameterError):
            parse_lastn(params)


@settings(max_examples=300, deadline=None)
@given(
    resource_type=st.sampled_from(sorted(PARAMETERS)),
    items=st.lists(st.tuples(st.sampled_from(PARAMETER_NAMES), SAFE_TEXT), max_size=4),
    strict=st.booleans(),
)
def test_any_query_parses_or_is_refused_by_name(resource_type, items, strict):
    try:
        parse_search(resource_type, items, strict=strict)
    except SearchParameterError as refused:
        assert refused.parameter


# -- pure: cursors and scopes -----------------------------------------------------------------


def test_cursors_are_bound_to_their_search_and_signed():
    cursor = Cursor(True, (1772000000000000, "bpm-1", "heart_rate", 1772000000000000), 42)
    token = encode_cursor(cursor, "search-1", SECRET)
    assert decode_cursor(token, "search-1", SECRET) == cursor
    forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    for bad, bound, secret in (
        (token, "search-2", SECRET),  # another search, or another caller
        (token, "search-1", b"other key"),
        (forged, "search-1", SECRET),
        ("garbage", "search-1", SECRET),
        ("a.b.c", "search-1", SECRET),
        ("x" * 2000, "search-1", SECRET),
    ):
        with pytest.raises(SearchParameterError):
            decode_cursor(bad, bound, secret)


@given(st.text(max_size=200))
def test_any_cursor_text_is_refused_cleanly(text):
    with pytest.raises(SearchParameterError):
        decode_cursor(text, "search-1", SECRET)


@pytest.mark.parametrize(
    ("kind", "resource_type", "allowed"),
    [
        ("operator", "AuditEvent", True),
        ("operator", "Patient", True),
        ("provider", "Patient", True),
        ("provider", "Observation", True),
        ("provider", "AuditEvent", False),
        ("startup", "Observation", True),
        ("startup", "Device", True),
        ("startup", "Patient", False),
        ("startup", "AuditEvent", False),
        ("nobody", "Location", False),
    ],
)
def test_scopes_by_kind_of_organisation(kind, resource_type, allowed):
    assert access.permits(access.scopes_for(kind), resource_type, "search") is allowed
    if not allowed:
        with pytest.raises(PermissionDeniedError):
            access.require(kind, resource_type, "read")
