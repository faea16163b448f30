"""Rows of a binary COPY as numpy record arrays, a few megabytes at a time.

For queries whose every column is fixed-width and never NULL, a row is a fixed number of
bytes (a field count, then per field its length and its big-endian value), so numpy reads
millions of them without a Python object each. The evaluation and the alert replay read
their readings this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

#: binary timestamptz values count microseconds from here
POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_HEADER = 19  # signature (11), flags (4), header extension length (4, always 0 here)
_CHUNK = 8 << 20


def copy_records(
    chunks: Iterable[Any], record: np.dtype[Any], fields: int
) -> Iterator[npt.NDArray[Any]]:
    """The COPY's rows as native-endian record arrays (`record` starts with the field count,
    ">i2"); the header is skipped and the trailer (a field count of -1) dropped."""
    pending = bytearray()
    header_left = _HEADER
    for chunk in chunks:
        pending += chunk
        if header_left:
            skip = min(header_left, len(pending))
            del pending[:skip]
            header_left -= skip
        if len(pending) >= _CHUNK:
            whole = len(pending) // record.itemsize * record.itemsize
            yield _native(pending[:whole], record, fields)
            del pending[:whole]
    if len(pending) >= 2:
        del pending[-2:]  # the trailer
    if pending:
        yield _native(pending, record, fields)


def _native(buffer: bytearray, record: np.dtype[Any], fields: int) -> npt.NDArray[Any]:
    rows = np.frombuffer(bytes(buffer), dtype=record)
    if rows.size and not bool(np.all(rows["fields"] == fields)):
        raise ValueError("unexpected row layout in a binary COPY (a NULL or a variable width)")
    return rows.astype(record.newbyteorder("="))
