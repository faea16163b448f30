"""The shipped JSON Schemas: up to date with the models, and saying what the contract says."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from test_contract_messages import SPEC_EXAMPLE

from ehealthlab.contract.catalogue import METRICS
from ehealthlab.contract.schema import SCHEMA_MODELS, main, render
from ehealthlab.contract.validation import validate_message

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def shipped(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("name", sorted(SCHEMA_MODELS))
def test_shipped_schemas_are_the_generated_ones(name: str) -> None:
    fresh = render(SCHEMA_MODELS[name])
    assert (SCHEMAS / name).read_text(encoding="utf-8") == fresh, (
        f"docs/schemas/{name} is out of date: run python -m ehealthlab.contract.schema"
    )


def test_rendering_is_stable() -> None:
    for model in SCHEMA_MODELS.values():
        assert render(model) == render(model)
        assert render(model).endswith("}\n")


def test_the_generator_writes_every_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path / "schemas")]) == 0
    written = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert written == sorted(SCHEMA_MODELS)
    for name in written:
        assert (tmp_path / "schemas" / name).read_bytes() == (SCHEMAS / name).read_bytes()
    assert "readings.schema.json" in capsys.readouterr().out


def test_the_contracts_example_is_valid() -> None:
    shipped("readings.schema.json").validate(SPEC_EXAMPLE)


def _changed(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(orjson.dumps(SPEC_EXAMPLE))
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


_DELETE = object()

INVALID_MESSAGES = [
    ("schema", "ehl.readings/2"),
    ("schema", _DELETE),
    ("msg_id", ""),
    ("msg_id", "m" * 65),
    ("msg_id", "bad\u0000id"),
    ("sent_at", "2026-11-25T08:01:07"),
    ("sent_at", "2026-11-25 08:01:07+01:00"),
    ("sent_at", 1764054067),
    ("readings", []),
    ("readings", SPEC_EXAMPLE["readings"] * 167),
    ("extra", "field"),
    ("readings", 0, "seq", -1),
    ("readings", 0, "seq", 1041.5),
    ("readings", 0, "value", True),
    ("readings", 0, "value", "142"),
    ("readings", 0, "value", None),
    ("readings", 0, "unit", 5),
    ("readings", 0, "at", "2026-11-25T08:00:30"),
    ("readings", 0, "at", "2026-11-25T08:00:30+01:60"),
    ("readings", 0, "at", _DELETE),
    ("readings", 0, "note", "fasting"),
]


@pytest.mark.parametrize("change", INVALID_MESSAGES)
def test_invalid_messages_fail_the_schema(change: tuple[Any, ...]) -> None:
    document = _changed(change[:-1], change[-1])
    assert not shipped("readings.schema.json").is_valid(document)


@pytest.mark.parametrize("change", INVALID_MESSAGES)
def test_what_the_schema_refuses_the_platform_refuses(change: tuple[Any, ...]) -> None:
    outcome = validate_message(
        orjson.dumps(_changed(change[:-1], change[-1])),
        device_type="blood_pressure_monitor",
        received_at=datetime(2026, 11, 25, 8, 1, 8, tzinfo=timezone(timedelta(hours=1))),
    )
    assert outcome.rejected
    assert all(r.reason == "schema_violation" for r in outcome.rejected)


def test_status_schema() -> None:
    validator = shipped("status.schema.json")
    assert validator.is_valid({"state": "online"})
    assert validator.is_valid({"state": "offline"})
    assert not validator.is_valid({"state": "sleeping"})
    assert not validator.is_valid({"state": "online", "battery": 80})


def test_feedback_schema_accepts_the_contracts_example_and_whole_rejections() -> None:
    validator = shipped("feedback.schema.json")
    assert validator.is_valid(
        {
            "msg_id": "6f1c2a9e-0b7d-4c55-9a51-2b8d1f0e7c11",
            "accepted": 2,
            "duplicates": 0,
            "rejected": [
                {
                    "index": 2,
                    "seq": 1043,
                    "reason": "out_of_range",
                    "detail": "heart_rate 900 /min outside 20\u2013300",
                }
            ],
        }
    )
    assert validator.is_valid(
        {
            "msg_id": None,
            "accepted": 0,
            "duplicates": 0,
            "rejected": [
                {"index": None, "seq": None, "reason": "malformed_json", "detail": "not valid JSON"}
            ],
        }
    )
    assert not validator.is_valid(
        {
            "msg_id": "m",
            "accepted": 0,
            "duplicates": 0,
            "rejected": [{"index": 0, "seq": 1, "reason": "too_cold", "detail": ""}],
        }
    )


def test_the_schema_describes_metrics_without_listing_them() -> None:
    # metric and unit stay plain strings in the schema: the catalogue decides, with its
    # own reason codes (unknown_metric, unit_mismatch), so the schema cannot drift from it
    reading = shipped("readings.schema.json").schema["$defs"]["ReadingItem"]["properties"]
    assert reading["metric"]["type"] == reading["unit"]["type"] == "string"
    assert "enum" not in reading["metric"]
    assert "heart_rate" in METRICS  # the catalogue is where the list lives
