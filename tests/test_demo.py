"""`ehealthlab demo` plays a day of the pilot through the real services, on its own stack."""

from __future__ import annotations

import re

import pytest

from ehealthlab import cli
from ehealthlab.settings import Settings
from ehealthlab.stack.local import LocalStack


def test_the_demo_shows_the_data_path_end_to_end(tmp_path, monkeypatch, capsys):
    state_dir = tmp_path / "demo-state"
    for name in (
        "DATABASE_URL",
        "MQTT_HOST",
        "MQTT_PORT",
        "MQTT_USERNAME",
        "MQTT_PASSWORD",
        "PATIENT_KEY",
        "TOKEN",
        "API_URL",
    ):
        monkeypatch.delenv(f"EHEALTHLAB_{name}", raising=False)
    monkeypatch.setenv("EHEALTHLAB_STATE_DIR", str(state_dir))
    try:
        assert cli.main(["demo"]) == 0
        out = capsys.readouterr().out
    finally:
        LocalStack(Settings(state_dir=state_dir)).down(purge=True)
    assert "message 'morning': 3 readings, 3 stored, 0 rejected" in out
    assert "message 'evening': 3 readings, 1 stored, 2 rejected" in out
    assert "unit_mismatch: unit 'mmHg' not accepted for bp_systolic" in out
    assert "alert for the provider: bp_systolic_high (bp_systolic 184)" in out
    assert "the cuff is offline" in out
    assert "FAIL  Units (UCUM)" in out and "PASS  Status and Last Will" in out
    # the simulated week: every SNAI class of its municipalities, late readings where the
    # link went down (Ala di Stura, E), and an Observation read back through FHIR
    week = out[out.index("demo: a week in Torino") :]
    # (the evaluation's indicators per SNAI class: latencies never negative)
    rows = re.findall(
        r"^  ([A-F]) +(\d+) +(\d+) +(\d+) s +(\d+) s +([\d.]+)% +([\d.]+)%$", week, re.MULTILINE
    )
    late = {snai_class: float(share) for snai_class, *_, share, _ in rows}
    assert set(late) == {"A", "D", "E", "F"}, week
    assert late["E"] > 0 and late["A"] == 0
    assert "FHIR: GET /fhir/Observation/$lastn" in week and "(LOINC " in week


@pytest.mark.parametrize("argv", [["demo", "--fast"], ["dmeo"]])
def test_a_wrong_demo_argument_is_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
