"""A device's store-and-forward memory on disk: readings it took and has not yet delivered.

One SQLite database per device, in WAL mode: a reading is committed here, with the next
`seq`, before the device tries the network, and leaves only when the broker has
acknowledged the message that carried it. A committed transaction survives the simulator
being killed (SIGKILL, a crash); only a power cut could lose the last few, which is the
trade of `synchronous=NORMAL` we accept for a simulator. The device's other lasting state
(battery) lives in the same file, so one directory is one device.

Readings are kept one row per measurement (the readings that share an `at`). A message is
formed from consecutive rows and its `msg_id` is written to them before it is first
published, so a message sent again after a lost connection carries the same `msg_id` and
the same readings, as the contract asks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from ehealthlab.errors import InvalidInputError
from ehealthlab.simulators.payloads import Reading, fits, msg_id_for

FILE_NAME = "device.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    first_seq INTEGER PRIMARY KEY,  -- seq of the measurement's first reading
    last_seq  INTEGER NOT NULL,
    readings  BLOB NOT NULL,        -- the readings as a JSON array, exactly as they are sent
    msg_id    TEXT                  -- set once a message carrying them was formed
);
CREATE INDEX IF NOT EXISTS pending_msg_idx ON pending (msg_id);
"""


@dataclass(frozen=True, slots=True)
class Batch:
    """The readings one message carries, and its `msg_id`."""

    msg_id: str
    first_seq: int
    last_seq: int
    readings: list[Reading]


class StoreAndForward:
    """The buffer of one device; open it over the device's state directory.

    Not for use by two threads at once (one device is pumped by one loop).
    """

    def __init__(self, state_dir: Path, device_id: str) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        owner = self.get("device_id")
        if owner is None:
            self.set("device_id", device_id)
        elif owner != device_id:
            self._db.close()
            raise InvalidInputError(
                f"{state_dir} holds the state of device {owner!r}, not {device_id!r}"
            )

    def close(self) -> None:
        self._db.close()

    # -- lasting settings (seq, battery) ------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def next_seq(self) -> int:
        """The seq the device's next reading gets: one more than any it ever took."""
        stored = self.get("next_seq")
        return 1 if stored is None else int(stored)

    # -- readings -----------------------------------------------------------------------

    def append(self, build: Callable[[int], Sequence[Reading]]) -> list[Reading]:
        """Keep the readings `build(next_seq)` returns and move `next_seq` past them, in one
        transaction: a seq is never handed out without its reading being kept."""
        with self._transaction():
            first = self.next_seq
            readings = list(build(first))
            if not readings:
                return readings
            seqs = [reading["seq"] for reading in readings]
            if seqs != list(range(first, first + len(readings))):
                raise InvalidInputError(f"readings must carry seq {first} onwards, got {seqs}")
            self._db.execute(
                "INSERT INTO pending (first_seq, last_seq, readings) VALUES (?, ?, ?)",
                (first, seqs[-1], orjson.dumps(readings)),
            )
            self.set("next_seq", str(seqs[-1] + 1))
        return readings

    def next_batches(self, after_seq: int, count: int, *, max_readings: int) -> list[Batch]:
        """Up to `count` messages carrying the oldest readings beyond `after_seq`.

        Readings already given a message keep it; the others are grouped, whole
        measurements at a time, into messages of at most `max_readings` readings and
        64 KiB, and the grouping is committed before the caller publishes any.
        """
        batches: list[Batch] = []
        with self._transaction():
            rows = self._db.execute(
                "SELECT first_seq, last_seq, readings, msg_id FROM pending"
                " WHERE first_seq > ? ORDER BY first_seq",
                (after_seq,),
            )
            for group in _groups(rows, max_readings):
                if len(batches) == count:
                    break
                batches.append(group)
            rows.close()
            for batch in batches:
                self._db.execute(
                    "UPDATE pending SET msg_id = ? WHERE first_seq BETWEEN ? AND ?"
                    " AND msg_id IS NULL",
                    (batch.msg_id, batch.first_seq, batch.last_seq),
                )
        return batches

    def delivered(self, msg_ids: Sequence[str]) -> None:
        """Forget the readings of messages the broker acknowledged."""
        if not msg_ids:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM pending WHERE msg_id = ?", [(m,) for m in msg_ids])

    def pending_readings(self) -> int:
        """Readings taken and not yet acknowledged by the broker."""
        row = self._db.execute("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM pending")
        return int(row.fetchone()[0])

    def pending_seqs(self) -> list[int]:
        return [
            seq
            for first, last in self._db.execute(
                "SELECT first_seq, last_seq FROM pending ORDER BY first_seq"
            )
            for seq in range(first, last + 1)
        ]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _groups(rows: sqlite3.Cursor, max_readings: int) -> Iterator[Batch]:
    """Rows (oldest first) gathered into messages: rows already given a msg_id stay
    together; the others fill a message while it stays within the limits."""
    current: list[tuple[int, int, bytes]] = []
    current_id: str | None = None
    count = size = 0

    def flush() -> Batch:
        readings: list[Reading] = []
        for _, _, blob in current:
            readings.extend(orjson.loads(blob))
        first, last = current[0][0], current[-1][1]
        return Batch(current_id or msg_id_for(first, last), first, last, readings)

    for first_seq, last_seq, blob, msg_id in rows:
        rows_readings = last_seq - first_seq + 1
        joins = current and msg_id == current_id
        if joins and msg_id is None:
            joins = fits(count + rows_readings, size + len(blob), max_readings=max_readings)
        if current and not joins:
            yield flush()
            current, count, size = [], 0, 0
        current.append((first_seq, last_seq, blob))
        current_id = msg_id
        count += rows_readings
        size += len(blob)
    if current:
        yield flush()
