"""Coverage-guided fuzzing of the contract's parser with atheris (libFuzzer), by hand:

    .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz_contract.py -runs=2000000 -max_len=4096 [CORPUS_DIR]

Each input is a readings message for a device type chosen by its first byte; the property is
the one the suite checks with hypothesis (tests/test_contract_fuzz.py): validate_message
never raises on what a device sends, and every rejection carries a reason and a detail. A
crash stops the run with the input saved as crash-*; docs/reliability-fuzzing.md records
the runs. Not part of the suite: atheris is not a dependency of the project.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import atheris

with atheris.instrument_imports():
    from ehealthlab.contract.catalogue import DEVICE_TYPES
    from ehealthlab.contract.validation import validate_message

RECEIVED_AT = datetime(2026, 3, 10, 7, 0, tzinfo=UTC)
TYPES = sorted(DEVICE_TYPES)


def one_input(data: bytes) -> None:
    if not data:
        return
    device_type = TYPES[data[0] % len(TYPES)]
    outcome = validate_message(data[1:], device_type=device_type, received_at=RECEIVED_AT)
    for rejection in outcome.rejected:
        if not rejection.detail.strip():
            raise AssertionError(f"a rejection without a detail: {rejection!r}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
