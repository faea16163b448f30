"""A device's store-and-forward memory on disk: readings it took and has not yet delivered.

One SQLite database per device: a reading is committed here, with the next `seq`, before
the device tries the network, and leaves only when the broker has acknowledged the message
that carried it. The device's other lasting state (battery) lives in the same file, so one
directory is one device.

The database is opened for each operation and closed after it, in rollback-journal mode,
because a runner drives hundreds of devices in one process and paho waits on its sockets
with select(), which fails for descriptors numbered 1024 or more: a WAL database open for
each device would hold three descriptors each and push the devices' sockets past that
(measured: connections time out from the 137th device). `synchronous=OFF` hands every
commit to the operating system before it returns, so a simulator killed at any moment
(SIGKILL, a crash) loses nothing it committed, and a transaction it was in the middle of is
rolled back on the next open; only a crash of the machine itself could lose or damage the
file, which a simulator can afford.

Readings are kept one row per measurement (the readings that share an `at`). A message is
formed from consecutive rows and its `msg_id` is written to them before it is first
published, so a message sent again after a lost connection carries the same `msg_id` and
the same readings, as the contract asks, with a fresh `sent_at` (contract v1.1): an old one
would make the platform read the delay as a wrong clock and "correct" the readings by it,
and ingest knows the resend for a redelivery by its `msg_id` and readings whatever its
`sent_at`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
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
    #: the `sent_at` to publish it with
    sent_at: str


class StoreAndForward:
    """The buffer of one device, over the device's state directory.

    One object at a time per directory (a simulator and its restarted self follow each
    other; they do not run side by side).
    """

    def __init__(self, state_dir: Path, device_id: str) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        with self._open() as db:
            db.executescript(_SCHEMA)
        owner = self.get("device_id")
        if owner is None:
            self.set("device_id", device_id)
        elif owner != device_id:
            raise InvalidInputError(
                f"{state_dir} holds the state of device {owner!r}, not {device_id!r}"
            )

    # -- lasting settings (seq, battery) ------------------------------------------------

    def get(self, key: str) -> str | None:
        with self._open() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        self.update({key: value})

    def update(self, values: Mapping[str, str]) -> None:
        with self._transaction() as db:
            for key, value in values.items():
                _set(db, key, value)

    @property
    def next_seq(self) -> int:
        """The seq the device's next reading gets: one more than any it ever took."""
        with self._open() as db:
            return _next_seq(db)

    # -- readings -----------------------------------------------------------------------

    def append(
        self, build: Callable[[int], Sequence[Reading]], meta: Mapping[str, str] | None = None
    ) -> list[Reading]:
        """Keep the readings `build(next_seq)` returns and move `next_seq` past them, in one
        transaction (with `meta`, settings that change with them): a seq is never handed out
        without its reading being kept."""
        with self._transaction() as db:
            first = _next_seq(db)
            readings = list(build(first))
            if not readings:
                return readings
            seqs = [reading["seq"] for reading in readings]
            if seqs != list(range(first, first + len(readings))):
                raise InvalidInputError(f"readings must carry seq {first} onwards, got {seqs}")
            db.execute(
                "INSERT INTO pending (first_seq, last_seq, readings) VALUES (?, ?, ?)",
                (first, seqs[-1], orjson.dumps(readings)),
            )
            _set(db, "next_seq", str(seqs[-1] + 1))
            for key, value in (meta or {}).items():
                _set(db, key, value)
        return readings

    def next_batches(
        self, after_seq: int, count: int, *, max_readings: int, sent_at: str
    ) -> list[Batch]:
        """Up to `count` messages carrying the oldest readings beyond `after_seq`, to be
        published with `sent_at`.

        Readings already given a message keep it; the others are grouped, whole
        measurements at a time, into messages of at most `max_readings` readings and
        64 KiB, and the grouping is committed before the caller publishes any.
        """
        formed: list[Batch] = []
        with self._transaction() as db:
            query = (
                "SELECT first_seq, last_seq, readings, msg_id"
                " FROM pending WHERE first_seq > ? ORDER BY first_seq"
            )
            with closing(db.execute(query, (after_seq,))) as rows:
                for batch in _groups(rows, max_readings, sent_at):
                    if len(formed) == count:
                        break
                    formed.append(batch)
            for batch in formed:  # the rows are read: now write
                db.execute(
                    "UPDATE pending SET msg_id = ? WHERE first_seq BETWEEN ? AND ?"
                    " AND msg_id IS NULL",
                    (batch.msg_id, batch.first_seq, batch.last_seq),
                )
        return formed

    def delivered(self, msg_ids: Sequence[str]) -> int:
        """Forget the readings of messages the broker acknowledged; how many went."""
        if not msg_ids:
            return 0
        removed = 0
        with self._transaction() as db:
            for msg_id in msg_ids:
                rows = db.execute(
                    "DELETE FROM pending WHERE msg_id = ? RETURNING last_seq - first_seq + 1",
                    (msg_id,),
                ).fetchall()
                removed += sum(count for (count,) in rows)
        return removed

    def pending_readings(self) -> int:
        """Readings taken and not yet acknowledged by the broker."""
        with self._open() as db:
            row = db.execute("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM pending")
            return int(row.fetchone()[0])

    def pending_seqs(self) -> list[int]:
        with self._open() as db:
            spans = db.execute("SELECT first_seq, last_seq FROM pending ORDER BY first_seq")
            return [seq for first, last in spans for seq in range(first, last + 1)]

    # -- the file -----------------------------------------------------------------------

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=OFF")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on an exception."""
        with self._open() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def _set(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _next_seq(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    return 1 if row is None else int(row[0])


def _groups(rows: sqlite3.Cursor, max_readings: int, sent_at: str) -> Iterator[Batch]:
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
        return Batch(current_id or msg_id_for(first, last), first, last, readings, sent_at)

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
