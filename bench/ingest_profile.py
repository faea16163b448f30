"""bench/ingest.py's summary of py-spy's raw stacks of the ingest workers (`--profile
DIR`): CPU by step of the worker, top functions, time by library."""

from __future__ import annotations

from collections import Counter

# -- the profile ------------------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """'write_row (psycopg/copy.py:123)' -> 'write_row (psycopg/copy.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def _area(frame: str) -> str:
    path = frame.partition(" (")[2]
    for area in ("paho", "psycopg", "ehealthlab/contract", "ehealthlab/ingest",
                 "ehealthlab/store", "ehealthlab/mqtt", "orjson", "queue", "threading",
                 "datetime", "dataclasses", "selectors", "socket"):  # fmt: skip
        if area in path:
            return area
    return "other"


#: the steps of an ingest worker, by a function on the stack; the first that matches wins
STEPS = (
    ("MQTT: whole PUBLISH packets decoded from the read buffer", "_BufferedClient.read_buffered"),
    ("MQTT: paho's reader (other packets, cut ones)", "Client.loop_read"),
    ("MQTT: write (PUBACKs, feedback)", "MqttConsumer._write"),
    ("validate + rows (judge)", "judge"),
    ("BEGIN and message claims", "_claim_messages"),
    ("readings: COPY, INSERT ... RETURNING, classify", "ReadingWriter.write_in_transaction"),
    ("device_messages COPY", "_write_message_logs"),
    ("settle (log row, feedback)", "settle"),
    ("alerts", "raise_alerts_for"),
    ("rejections", "write_rejections"),
    ("the closing wait (COMMIT)", "PipelinedTransaction.closing"),
    ("last_seen UPDATE", "_touch_devices"),
    ("partitions, staging (prepare)", "ReadingWriter.prepare"),
    ("ack and feedback", "IngestWorker._acknowledge"),
    ("collect (waiting for the batch to fill)", "IngestWorker._collect"),
    ("rest of _write_batch (commit, stats)", "IngestWorker._write_batch"),
)
#: frames every sample has (process start, thread start, the loops): not worth listing
_WRAPPERS = (
    "(threading.py)", "(multiprocessing/", "(<string>)", "run_worker (", "IngestWorker.run (",
    "IngestWorker._store (", "Client.loop_forever (", "Client._thread_main (",
)  # fmt: skip


def summarise_profile(raw: str, title: str, top: int = 15) -> list[str]:
    """From py-spy's raw (collapsed) stacks of the worker processes (all their threads):
    CPU by step of the worker, top functions by own and by inclusive time, and by library."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame_name(f) for f in stack.split(";")
            if not f.startswith(("process ", "thread ")) and " (" in f
        ]  # fmt: skip
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for name in set(frames):
            if not any(w in name for w in _WRAPPERS):
                inclusive[name] += count
        functions = {f.partition(" (")[0] for f in frames}
        step = next((label for label, function in STEPS if function in functions), "other")
        steps[step] += count
    if not total:
        return [f"{title}: no samples"]

    def share(c: int) -> str:
        return f"{100 * c / total:5.1f} %"

    lines = [f"profile of {title} ({total} samples of running threads, 100 Hz)"]
    lines.append("  by step of the worker:")
    lines += [f"    {share(c)}  {label}" for label, c in steps.most_common()]
    lines.append("  own time (leaf function):")
    lines += [f"    {share(c)}  {name}" for name, c in own.most_common(top)]
    lines.append("  inclusive time (without the thread and loop frames every sample has):")
    lines += [f"    {share(c)}  {name}" for name, c in inclusive.most_common(top)]
    lines.append("  own time by library: " + ", ".join(
        f"{area} {100 * c / total:.0f} %" for area, c in areas.most_common()))  # fmt: skip
    return lines
