"""JSON Schemas of the contract's messages, generated from the models.

Start-ups validate their payloads against these files before they ever connect, so the
files are shipped in docs/schemas and regenerated, never edited:

    python -m ehealthlab.contract.schema --out docs/schemas

The output is stable (sorted keys, two-space indent, final newline) so a change to a
model shows up as a readable diff, and a test fails when the shipped files fall behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ehealthlab.contract.messages import FeedbackMessage, ReadingsMessage, StatusMessage

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: file name in docs/schemas → the model it describes
SCHEMA_MODELS: Mapping[str, type[BaseModel]] = {
    "readings.schema.json": ReadingsMessage,
    "status.schema.json": StatusMessage,
    "feedback.schema.json": FeedbackMessage,
}


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of what goes over the wire for `model`."""
    # validation mode: what a device may send; field names as they appear on the wire
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def render(model: type[BaseModel]) -> str:
    """The schema file's text: the same model always gives the same bytes."""
    return json.dumps(json_schema(model), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema file into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_MODELS.items():
        path = directory / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ehealthlab.contract.schema",
        description="Write the JSON Schemas of the device contract's messages.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs/schemas"), help="directory (default: docs/schemas)"
    )
    args = parser.parse_args(argv)
    for path in write_schemas(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
