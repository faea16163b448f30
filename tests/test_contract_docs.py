"""docs/device-contract.md tells start-ups the truth: its examples give the feedback shown,
and its tables are the catalogue's."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from ehealthlab.contract.catalogue import DEVICE_TYPES, METRICS
from ehealthlab.contract.outcome import build_feedback
from ehealthlab.contract.validation import validate_message
from ehealthlab.contract.wording import EN_DASH, format_number

DOC = (Path(__file__).resolve().parents[1] / "docs" / "device-contract.md").read_text(
    encoding="utf-8"
)
# the examples' device and receive time, as the page states them
DEVICE_TYPE = "blood_pressure_monitor"
RECEIVED_AT = datetime(2026, 11, 25, 8, 1, 8, tzinfo=timezone(timedelta(hours=1)))

_BLOCK = re.compile(r"```\w* (?P<kind>readings|feedback)-example\n(?P<body>.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    blocks = [(m["kind"], m["body"]) for m in _BLOCK.finditer(DOC)]
    assert [kind for kind, _ in blocks] == ["readings", "feedback"] * (len(blocks) // 2)
    return [(blocks[i][1], blocks[i + 1][1]) for i in range(0, len(blocks), 2)]


def test_the_page_states_the_examples_setting() -> None:
    assert f"the device is a `{DEVICE_TYPE}`" in DOC
    assert f"arrives at\n`{RECEIVED_AT.isoformat()}`" in DOC
    assert len(examples()) >= 6


@pytest.mark.parametrize(("payload", "feedback"), examples())
def test_each_example_gets_the_feedback_shown(payload: str, feedback: str) -> None:
    outcome = validate_message(payload.encode(), device_type=DEVICE_TYPE, received_at=RECEIVED_AT)
    produced = build_feedback(outcome)
    expected = orjson.loads(feedback)
    assert (None if produced is None else orjson.loads(produced.payload())) == expected


def _table_row(first_cell: str) -> str:
    (row,) = [line for line in DOC.splitlines() if line.startswith(f"| `{first_cell}` |")]
    return row


@pytest.mark.parametrize("code", list(METRICS))
def test_the_metrics_table_is_the_catalogue(code: str) -> None:
    entry = METRICS[code]
    cells = [cell.strip() for cell in _table_row(code).strip("|").split("|")]
    assert cells[1] == f"`{entry.unit}`"
    assert re.findall(r"`([^`]+)`", cells[2]) == list(entry.accepted_units[1:])
    assert cells[3] == f"{format_number(entry.minimum)}{EN_DASH}{format_number(entry.maximum)}"
    assert set(re.findall(r"\d+-\d", cells[4])) == {c.code for c in entry.loinc} | (
        {entry.loinc_panel.code} if entry.loinc_panel else set()
    )


@pytest.mark.parametrize("code", list(DEVICE_TYPES))
def test_the_device_types_table_is_the_catalogue(code: str) -> None:
    row = _table_row(code)
    listed = set(re.findall(r"`([a-z_0-9]+)`", row)) - {code}
    if code == "multiparameter_monitor":
        assert "every metric" in row
    else:
        assert listed == DEVICE_TYPES[code].metrics
