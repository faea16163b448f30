"""The metric catalogue: exactly the contract's tables, conversions checked by hand, and
codes that are at least well-formed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ehealthlab.contract.catalogue import (
    DEVICE_TYPES,
    LOINC_SYSTEM,
    MDC_SYSTEM,
    METRICS,
    convert,
    device_type,
    metric,
)
from ehealthlab.errors import InvalidInputError

DOCS = Path(__file__).resolve().parents[1] / "docs"

# The contract's metric table, copied from its text:
# metric: (canonical unit, also accepted, minimum, maximum, LOINC codes)
CONTRACT_METRICS = {
    "bp_systolic": ("mm[Hg]", {"kPa"}, 40, 300, {"8480-6"}),
    "bp_diastolic": ("mm[Hg]", {"kPa"}, 20, 200, {"8462-4"}),
    "heart_rate": ("/min", set(), 20, 300, {"8867-4"}),
    "spo2": ("%", set(), 50, 100, {"59408-5", "2708-6"}),
    "respiratory_rate": ("/min", set(), 2, 80, {"9279-1"}),
    "body_weight": ("kg", {"g", "[lb_av]"}, 2, 400, {"29463-7"}),
    "body_temperature": ("Cel", {"[degF]"}, 25, 45, {"8310-5"}),
    "blood_glucose": ("mg/dL", {"mmol/L"}, 10, 1000, {"2339-0"}),
    "steps": ("{steps}", set(), 0, 100000, {"55423-8"}),
}

CONTRACT_DEVICE_TYPES = {
    "blood_pressure_monitor": {"bp_systolic", "bp_diastolic", "heart_rate"},
    "pulse_oximeter": {"spo2", "heart_rate"},
    "weighing_scale": {"body_weight"},
    "thermometer": {"body_temperature"},
    "glucometer": {"blood_glucose"},
    "activity_tracker": {"steps", "heart_rate", "respiratory_rate"},
    "multiparameter_monitor": set(CONTRACT_METRICS),
}


def test_the_catalogue_has_exactly_the_contracts_metrics() -> None:
    assert list(METRICS) == list(CONTRACT_METRICS)
    for code, (unit, also, minimum, maximum, loinc) in CONTRACT_METRICS.items():
        entry = METRICS[code]
        assert entry.code == code
        assert entry.unit == unit
        assert entry.accepted_units[0] == unit
        assert set(entry.accepted_units) == {unit} | also
        assert (entry.minimum, entry.maximum) == (minimum, maximum)
        assert {c.code for c in entry.loinc} == loinc


def test_blood_pressure_components_belong_to_the_panel() -> None:
    for code, entry in METRICS.items():
        expected = "85354-9" if code.startswith("bp_") else None
        assert (entry.loinc_panel.code if entry.loinc_panel else None) == expected


def test_the_catalogue_has_exactly_the_contracts_device_types() -> None:
    assert {code: set(d.metrics) for code, d in DEVICE_TYPES.items()} == CONTRACT_DEVICE_TYPES
    assert all(d.code == code for code, d in DEVICE_TYPES.items())


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, digit in enumerate(int(c) for c in reversed(digits)):
        doubled = digit * 2 - 9 if digit >= 5 else digit * 2
        total += doubled if position % 2 else digit
    return total % 10 == 0


def test_the_check_digit_rule_catches_a_typo() -> None:
    # LOINC's own worked example is 12345-5; one digit off must fail
    assert _luhn_valid("123455")
    assert not _luhn_valid("123456")
    assert not _luhn_valid("84807")


def every_loinc_code() -> list[str]:
    codes = {c.code for m in METRICS.values() for c in m.loinc}
    codes |= {m.loinc_panel.code for m in METRICS.values() if m.loinc_panel}
    return sorted(codes)


@pytest.mark.parametrize("code", every_loinc_code())
def test_loinc_codes_have_a_valid_check_digit(code: str) -> None:
    assert re.fullmatch(r"[0-9]{1,7}-[0-9]", code)
    assert _luhn_valid(code.replace("-", ""))


def test_the_r4_vital_signs_code_comes_first() -> None:
    # the FHIR mapping takes loinc[0] as the code R4 vital-signs profiles expect
    for entry in METRICS.values():
        flags = [c.in_r4_vital_signs for c in entry.loinc]
        assert flags == sorted(flags, reverse=True), entry.code
    assert METRICS["spo2"].loinc[0].code == "2708-6"


def test_mdc_codes_are_partition_and_term() -> None:
    # physiological metrics live in partition MDC_PART_SCADA (2), device
    # specializations in MDC_PART_INFRA (8); the 32-bit code is partition << 16 | term
    for entry in METRICS.values():
        for mdc in entry.mdc:
            assert mdc.code >> 16 == 2, mdc
            assert mdc.reference_id.startswith("MDC_")
    for device in DEVICE_TYPES.values():
        if device.mdc_specialization is not None:
            assert device.mdc_specialization.code >> 16 == 8
            assert device.mdc_specialization.reference_id.startswith("MDC_DEV_SPEC_PROFILE_")


def test_every_code_shipped_is_in_the_verification_record() -> None:
    record = (DOCS / "code-verification.md").read_text(encoding="utf-8")
    shipped = set(every_loinc_code())
    shipped |= {str(c.code) for m in METRICS.values() for c in m.mdc}
    shipped |= {
        str(d.mdc_specialization.code) for d in DEVICE_TYPES.values() if d.mdc_specialization
    }
    missing = {code for code in shipped if code not in record}
    assert not missing, f"codes not recorded in docs/code-verification.md: {sorted(missing)}"


def test_code_systems_are_the_fhir_uris() -> None:
    assert LOINC_SYSTEM == "http://loinc.org"
    assert MDC_SYSTEM == "urn:iso:std:iso:11073:10101"


# (metric, value, unit, expected canonical value), worked out by hand
CONVERSIONS = [
    ("bp_systolic", 120, "mm[Hg]", 120.0),
    ("bp_systolic", 1, "kPa", 7.50062),
    ("bp_systolic", 16, "kPa", 120.00992),
    ("bp_diastolic", 80, "mm[Hg]", 80.0),
    ("bp_diastolic", 10.5, "kPa", 78.75651),
    ("heart_rate", 72, "/min", 72.0),
    ("spo2", 97.5, "%", 97.5),
    ("respiratory_rate", 16, "/min", 16.0),
    ("body_weight", 70.2, "kg", 70.2),
    ("body_weight", 70200, "g", 70.2),
    ("body_weight", 1, "g", 0.001),
    ("body_weight", 1, "[lb_av]", 0.45359237),
    ("body_weight", 154, "[lb_av]", 69.85322498),
    ("body_temperature", 37.2, "Cel", 37.2),
    ("body_temperature", 100, "[degF]", 37.77777777777778),
    ("body_temperature", 98.6, "[degF]", 37.0),
    ("body_temperature", 32, "[degF]", 0.0),
    ("body_temperature", -40, "[degF]", -40.0),
    ("body_temperature", 113, "[degF]", 45.0),
    ("blood_glucose", 99, "mg/dL", 99.0),
    ("blood_glucose", 5.5, "mmol/L", 99.088),
    ("blood_glucose", 1, "mmol/L", 18.016),
    ("steps", 8500, "{steps}", 8500.0),
]


@pytest.mark.parametrize(("metric_code", "value", "unit", "expected"), CONVERSIONS)
def test_conversions_to_the_canonical_unit(
    metric_code: str, value: float, unit: str, expected: float
) -> None:
    assert convert(metric_code, value, unit) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_every_accepted_unit_has_a_worked_conversion() -> None:
    tested = {(m, u) for m, _, u, _ in CONVERSIONS}
    every = {(code, unit) for code, m in METRICS.items() for unit in m.accepted_units}
    assert every == tested


@pytest.mark.parametrize(
    ("metric_code", "unit"),
    [("bp_systolic", "mmHg"), ("heart_rate", "bpm"), ("body_weight", "lb"), ("spo2", "")],
)
def test_convert_refuses_a_unit_the_metric_does_not_accept(metric_code: str, unit: str) -> None:
    with pytest.raises(InvalidInputError, match="not accepted for"):
        convert(metric_code, 1, unit)


def test_convert_names_the_accepted_units() -> None:
    with pytest.raises(InvalidInputError, match=r"use 'mm\[Hg\]' or 'kPa'"):
        convert("bp_systolic", 120, "mmHg")


def test_lookups_return_the_entry_or_name_the_known_codes() -> None:
    assert metric("spo2") is METRICS["spo2"]
    assert device_type("glucometer") is DEVICE_TYPES["glucometer"]
    with pytest.raises(InvalidInputError, match="known metrics are bp_systolic"):
        metric("pulse")
    with pytest.raises(InvalidInputError, match="known device types are blood_pressure_monitor"):
        device_type("toaster")
    with pytest.raises(InvalidInputError, match="unknown metric"):
        convert("pulse", 1, "/min")


def test_the_catalogue_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        METRICS["pulse"] = METRICS["heart_rate"]  # type: ignore[index]
    with pytest.raises(TypeError):
        METRICS["heart_rate"].conversions["bpm"] = METRICS["heart_rate"].conversions["/min"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        METRICS["heart_rate"].maximum = 1000  # type: ignore[misc]
