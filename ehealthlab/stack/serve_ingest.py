"""The local stack's ingest worker, as a background service: `ehealthlab ingest`'s one worker
(the same IngestWorker, alert rules, metrics line and SIGTERM handling), which also says when
it is subscribed by writing its pid to `--ready-file`.

Until the worker has subscribed once, what devices publish reaches no one (a shared
subscription with no subscriber drops it); once it has, its persistent session keeps it. So
`ehealthlab demo` waits for this file before any device publishes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ehealthlab.errors import EhealthlabError
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.ingest.alerts import DEFAULT_RULES, load_rules
from ehealthlab.ingest.metrics import WorkerMetrics, report_every_minute
from ehealthlab.ingest.stamp_check import require_receive_stamp
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ehealthlab.stack.serve_ingest")
    parser.add_argument("--name", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        settings = settings_with_stack(Settings())
        settings.require_database_url()
        settings.require_mqtt()
        if settings.mqtt_username is not None:
            with DynamicSecurity(BrokerAddress.from_settings(settings)) as dynsec:
                dynsec.ensure_platform_role(settings.mqtt_username)
        require_receive_stamp(settings)
        rules = DEFAULT_RULES if settings.alert_rules is None else load_rules(settings.alert_rules)
    except EhealthlabError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return exc.exit_status
    # partitioned, as `ehealthlab ingest` is by default: its durable subscription survives a
    # broker restart, and a stopped worker's session keeps what arrives until it is back
    config = IngestConfig(rules=rules, subscription="partitioned", partition=0, partitions=1)
    worker = IngestWorker(settings, args.name, config)
    metrics = WorkerMetrics(worker)
    threading.Thread(target=report_every_minute, args=(metrics, stop), daemon=True).start()
    threading.Thread(target=_say_ready, args=(worker, args.ready_file, stop), daemon=True).start()
    try:
        worker.run(stop)
    finally:
        stop.set()
    return 0


def _say_ready(worker: IngestWorker, ready_file: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        if worker.subscribed.wait(0.5):
            partial = ready_file.with_name(ready_file.name + ".tmp")
            partial.write_text(f"{os.getpid()}\n")
            partial.replace(ready_file)
            return


if __name__ == "__main__":
    sys.exit(main())
