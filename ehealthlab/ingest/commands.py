"""`ehealthlab ingest [--workers N]`: run ingest workers until stopped.

Workers are separate processes (validation is CPU work; two cores, two processes) with
stable names `ingest-1` … `ingest-N`, so a worker that is killed and restarted takes its
persistent session, and what the broker kept for it, back. By default each keeps one
partition of the devices from a durable subscription of its own: Mosquitto 2.0 keeps those
across a restart, and not shared subscriptions (docs/ingest.md). SIGTERM or Ctrl-C: each worker
stops taking messages, stores and acknowledges what it holds, and the command exits 0.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import re
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ehealthlab.errors import ConfigurationError
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.gc_tuning import tune_garbage_collector
from ehealthlab.ingest.alerts import DEFAULT_RULES, load_rules
from ehealthlab.ingest.metrics import WorkerMetrics, report_every_minute, serve_metrics
from ehealthlab.ingest.stamp_check import require_receive_stamp
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="move readings from the broker into the store (runs until stopped)",
        description="Run ingest workers, each keeping the readings of its partition of the "
        "devices from a durable subscription of its own (or, with --subscription shared, "
        "from $share/ingest/ehl/v1/devices/+/readings). SIGTERM: finish the batch, then "
        "exit 0.",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker processes (default 1)"
    )
    parser.add_argument(
        "--first",
        type=int,
        default=1,
        metavar="I",
        help="number of the first worker, for several machines (default 1)",
    )
    parser.add_argument(
        "--name",
        default="ingest",
        metavar="PREFIX",
        help="workers are PREFIX-1 .. PREFIX-N on the broker (default ingest); two pipelines "
        "on one broker need two prefixes",
    )
    parser.add_argument(
        "--retire",
        action="store_true",
        help="end these workers' broker sessions for good, after storing what the broker "
        "kept for them: for the old set, once a new number of partitions runs",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="P",
        help="serve /metrics for Prometheus on 127.0.0.1:P (worker i: P+i-1)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=20.0,
        metavar="MS",
        help="longest wait to fill a batch, counted from the broker's receipt of its first "
        "message (default 20); messages already read join it after that too, so 0 stores "
        "what came while the last batch was being stored",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a batch the database has not answered in S seconds is retried on a new "
        "connection (default 30)",
    )
    parser.add_argument(
        "--subscription",
        choices=("partitioned", "shared"),
        default="partitioned",
        help="partitioned (default): each worker keeps the devices of its partition from a "
        "durable subscription of its own, which survives a Mosquitto restart; shared: the "
        "broker splits messages over $share/ingest, only for a broker that keeps shared "
        "subscriptions across a restart, which Mosquitto 2.0 does not (docs/ingest.md)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        metavar="N",
        help="partitioned: how many partitions in all, the same on every machine (default: "
        "--workers, when this machine runs them all)",
    )
    parser.add_argument(
        "--alert-rules",
        default=None,
        metavar="FILE",
        help="TOML file overriding the default alert rules (default: EHEALTHLAB_ALERT_RULES)",
    )
    parser.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.batch_timeout <= 3600:
        raise ConfigurationError("--batch-timeout must be between 1 and 3600 seconds")
    if not 0 <= args.batch_wait_ms <= 10_000:
        raise ConfigurationError("--batch-wait-ms must be between 0 and 10000 milliseconds")
    if args.workers < 1 or args.workers > 64:
        raise ConfigurationError("--workers must be between 1 and 64")
    if args.subscription == "partitioned" and args.partitions is None:
        if args.first != 1:
            raise ConfigurationError(
                "workers on several machines need --partitions N, the same on every machine"
            )
        args.partitions = args.workers
    settings = settings_with_stack(settings)
    settings.require_database_url()
    settings.require_mqtt()
    # the platform's client needs the platform role to read the shared subscription; the API
    # gives it too, but ingest may well be started first
    username = settings.mqtt_username
    if username is not None:
        with DynamicSecurity(BrokerAddress.from_settings(settings)) as dynsec:
            dynsec.ensure_platform_role(username)
    require_receive_stamp(settings)
    rules_file = Path(args.alert_rules) if args.alert_rules else settings.alert_rules
    rules = DEFAULT_RULES if rules_file is None else load_rules(rules_file)
    partitions = args.partitions or 1
    if args.subscription == "partitioned" and args.first + args.workers - 1 > partitions:
        raise ConfigurationError(
            f"workers {args.first}..{args.first + args.workers - 1} do not fit in "
            f"{partitions} partitions: give --partitions"
        )
    if not is_valid_worker_prefix(args.name):
        raise ConfigurationError(
            f"--name {args.name!r}: use 1 to 40 characters of a-z, 0-9 and '-'"
        )
    names = [f"{args.name}-{args.first + i}" for i in range(args.workers)]
    configs = [
        IngestConfig(
            batch_max_wait_s=args.batch_wait_ms / 1000,
            batch_timeout_s=args.batch_timeout,
            rules=rules,
            subscription=args.subscription,
            partition=args.first + i - 1,
            partitions=partitions if args.subscription == "partitioned" else 1,
        )
        for i in range(args.workers)
    ]
    ports = [
        None if args.metrics_port is None else args.metrics_port + i for i in range(args.workers)
    ]
    if args.retire:
        for name, config in zip(names, configs, strict=True):
            IngestWorker(settings, name, config).retire()
            print(f"{config.client_id(name)}: session ended")
        return 0
    if args.workers == 1:
        return run_worker(settings, names[0], configs[0], ports[0])
    context = multiprocessing.get_context("spawn")
    return supervise(context, settings, names, configs, ports)


#: how long `supervise` waits before starting a dead worker again, doubling to the maximum
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 30.0


def supervise(
    context: Any,
    settings: Settings,
    names: list[str],
    configs: list[IngestConfig],
    ports: list[int | None],
) -> int:
    """Run one process per worker until SIGTERM or SIGINT, starting again under the same name
    any worker that dies meanwhile: its partition would otherwise wait in the broker for a
    worker nobody restarts (the parent still running, its supervisor sees nothing wrong)."""
    stopping = threading.Event()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )

    def start(i: int) -> Any:
        process = context.Process(
            target=run_worker, args=(settings, names[i], configs[i], ports[i]), name=names[i]
        )
        process.start()
        return process

    processes = [start(i) for i in range(len(names))]
    delays = [RESTART_INITIAL_S] * len(names)
    due: list[float | None] = [None] * len(names)

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping.is_set():
        for i, process in enumerate(processes):
            if process.is_alive() or stopping.is_set():
                continue
            now = time.monotonic()
            if due[i] is None:
                due[i] = now + delays[i]
                logging.warning(
                    "%s: worker exited (status %s); starting it again in %.0f s",
                    names[i], process.exitcode, delays[i],
                )  # fmt: skip
            elif now >= (due[i] or now):
                processes[i] = start(i)
                due[i] = None
                delays[i] = min(delays[i] * 2, RESTART_MAX_S)
        stopping.wait(0.2)
    for process in processes:
        process.join()
    return max((p.exitcode or 0) for p in processes)


def is_valid_worker_prefix(prefix: str) -> bool:
    """A prefix that keeps client ids readable and free of the partition mark's dot."""
    return re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", prefix) is not None


def run_worker(
    settings: Settings, name: str, config: IngestConfig, metrics_port: int | None
) -> int:
    """One worker in this process, until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    worker = IngestWorker(settings, name, config)
    metrics = WorkerMetrics(worker)
    server = serve_metrics(metrics, metrics_port) if metrics_port is not None else None
    reporter = threading.Thread(target=report_every_minute, args=(metrics, stop), daemon=True)
    reporter.start()
    tune_garbage_collector()
    try:
        worker.run(stop)
    finally:
        stop.set()
        if server is not None:
            server.shutdown()
    return 0
