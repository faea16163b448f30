"""What a run of bench/ingest.py is: its scenarios, what each one measured, and the
run's options (parsed in bench/ingest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# -- what a run is ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    consumer: str  # "ingest", "floor", "bare", "paho" or "naive"
    per_message: int
    rate: float  # messages/s offered
    check: str = ""  # "sustained", "capacity" or "latency": how the goal is judged
    goal: float = 0.0  # readings/s (sustained, capacity) or p99 ms (latency)
    profile: bool = False


@dataclass
class Outcome:
    scenario: Scenario
    offered_msgs: float = 0.0
    sent: int = 0
    refused: int = 0
    committed_readings_s: float = 0.0
    committed_msgs_s: float = 0.0
    backlog_msgs: int = 0
    drain_readings_s: float | None = None
    drained: bool = False
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    latency_n: int = 0
    #: p50 and p99 of the two legs: sent_at to the broker's receive stamp (publishers and
    #: broker), and the stamp to the commit (ingest and the database)
    to_broker_ms: tuple[float, float] | None = None
    in_platform_ms: tuple[float, float] | None = None
    rejected: int = 0
    #: transactions that committed readings, a second (ingest's and the floor's batches)
    batches_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    devices: int
    publishers: int
    duration: float
    warmup: float
    drain: float
    window: int
    single_rate: float
    single_max_rate: float
    batch_rate: float
    batch_max_rate: float
    latency_rate: float
    #: offered to bare MQTT and the paho-only client: above their capacity, which on a fast
    #: day is above ingest's single-max rate (a ratio to a bare MQTT that kept up with its
    #: offer would flatter ingest)
    bare_rate: float
    profile_dir: Path | None
    quick: bool = False
    no_load: bool = False
    only: frozenset[str] = frozenset()
    workers: int = 2
    #: ingest's --batch-wait-ms (None: its default)
    batch_wait_ms: float | None = None
    #: > 0: compare the broker with and without its journal over this many rounds
    journal_rounds: int = 0


def scenarios(options: Options) -> list[Scenario]:
    """At the goal's rate (is it sustained: committed keeps up, no backlog builds?), above it
    (what is committed when offered more than it can take: capacity), latency, baseline."""
    profile = options.profile_dir is not None
    return [
        Scenario("single", "ingest 1 rd/msg, 10k offered", "ingest", 1, options.single_rate,
                 "info", 10_000),
        Scenario("single-max", "ingest 1 rd/msg, above", "ingest", 1, options.single_max_rate,
                 "capacity", 10_000, profile),
        Scenario("batch", "ingest 50 rd/msg, goal rate", "ingest", 50, options.batch_rate,
                 "sustained", 50_000),
        Scenario("batch-max", "ingest 50 rd/msg, above", "ingest", 50, options.batch_max_rate,
                 "capacity", 50_000, profile),
        Scenario("latency", "ingest 1 rd/msg, latency", "ingest", 1, options.latency_rate,
                 "latency", 50, profile),
        Scenario("bare", "bare MQTT 1 msg, above", "bare", 1, options.bare_rate),
        Scenario("paho", "paho receive+ack only, above", "paho", 1, options.bare_rate),
        Scenario("naive", "naive bridge 1 rd/msg", "naive", 1, options.single_max_rate),
        # the least any ingest must do (bench/ingest_floor.py): what ingest could reach here
        Scenario("floor-single-max", "floor 1 rd/msg, above", "floor", 1,
                 options.single_max_rate, "capacity", 10_000),
        Scenario("floor-batch-max", "floor 50 rd/msg, above", "floor", 50,
                 options.batch_max_rate, "capacity", 50_000),
        Scenario("floor-latency", "floor 1 rd/msg, latency", "floor", 1, options.latency_rate,
                 "latency", 50),
        # the same with the readings' roll-up triggers off: the schema's share of the floor
        Scenario("floor-keys-single-max", "floor, no roll-ups, 1 rd/msg", "floor", 1,
                 options.single_max_rate, "capacity", 10_000),
        Scenario("floor-keys-batch-max", "floor, no roll-ups, 50 rd/msg", "floor", 50,
                 options.batch_max_rate, "capacity", 50_000),
    ]  # fmt: skip
