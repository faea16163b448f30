"""The FHIR API under load, on a store of 50 million readings: a patient's last 1,000
Observations, $lastn, and 20-entry searches per second, beside baselines of the same run.

Usage:
    .venv/bin/python bench/fhir_api.py [--store DIR] [--reuse] [--days N] [--duration S]
        [--timescale-url postgresql://SUPERUSER@HOST:PORT/postgres] [--remove]
        [--only plain|timescale] [--build-only] [--pythonpath DIR] [--profile DIR]

The store (default /var/tmp/ehl-fhir-bench, outside the repository) is a private PostgreSQL
cluster holding a year of a pilot: 2,000 patients of 4 providers, each with a blood-pressure
cuff used 4 times a day (a panel and a pulse per inflation), 1,200 of them also wearing a
pulse oximeter that measures every 30 minutes, 1,000 weighing themselves daily, and 40
thermometers nobody is enrolled with (unassigned readings); every 25th patient was enrolled
two months late (the readings before are unassigned), every 50th cuff's clock runs an hour
behind (clock-corrected readings). 365 days make 51.2 million readings (`--days` scales it).
Readings are written in time order, as ingest would, by binary COPY from two processes, with
the indexes built afterwards. `--reuse` takes the store a previous run left (the run keeps it,
stopped, unless `--remove`). `--timescale-url` builds the same store in the TimescaleDB form
on that server (database `ehl_fhir_bench`, kept for `--reuse` like the other) and measures
both.

Each form is served by one uvicorn worker of the real application (`create_app`), started
in a process of its own on 127.0.0.1 with a private Mosquitto; the load comes from wrk
(Debian's package) in another process, over loopback, with a bounded number of connections:
- latency, one connection (closed loop: each request waits for the previous one): a patient's
  last 1,000 Observations (`_count=1000&_sort=-date`) and `$lastn` (max=1), patients taken in
  turn from 200 of one provider's;
- throughput, 16 connections: the first page of a patient's search (`_count=20`), with the
  default totals, with `_total=none`, and a second page (its cursor carries the total);
- baselines, same run, same load: the same searches answered through fhir.resources R4B
  models built and validated for every row (`/bench/r4b/...`, a route of this script: the
  production query, audit and paging, only the rendering differs), and a fixed 20-entry
  Bundle returned as a dict for FastAPI to encode: by default (`jsonable_encoder`, then
  `json.dumps`), and through a return type (pydantic);
- a ladder, same load: that fixed Bundle as bytes (what server and client manage doing
  nothing else: the ceiling), then behind the token check, then after one `SELECT 1` on the
  API's own pool; the steps between the ladder and a search show where its time goes.
CPU is read from /proc for the API worker, wrk and the whole machine over each measurement:
when wrk uses a fraction of a core while the worker uses all of one, the client is not the
bottleneck. `--pythonpath DIR` puts DIR first on the worker's path and runs uvicorn with
httptools and uvloop from there (`.venv/bin/pip install --target DIR httptools uvloop`:
uvicorn's optional C parts, which the project does not install); `--profile DIR` records the
worker with py-spy (`--gil`) during the runs with many connections.

Figures depend on the machine (2 shared cores here, load generator on the same machine);
compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn
from fhir_api_load import machine_busy
from fhir_api_measure import measure
from fhir_api_report import _machine, report
from fhir_api_store import DATABASE, Store, plain_store, timescale_store
from fhir_api_worker import REPOSITORY, Worker, baseline_router

from ehealthlab.api.app import create_app
from ehealthlab.settings import Settings
from ehealthlab.stack.mosquitto import MosquittoBroker
from ehealthlab.stack.ports import accepts_connections, free_port, start_on_free_port
from ehealthlab.stack.programs import ServiceAccount, place_for

DEFAULT_STORE = Path("/var/tmp/ehl-fhir-bench")  # noqa: S108 - outside the repository, on purpose


# -- the API worker: this script, run as `serve` -------------------------------------------------


def serve(port: int, http: str, loop: str) -> None:
    """One uvicorn worker of the real application, with this benchmark's routes added (no
    access log: `ehealthlab api` writes one, which costs tens of microseconds a request)."""
    app = create_app(Settings())
    app.include_router(baseline_router())
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http=http,
        loop=loop,
    )


def start_worker(
    store: Store, broker: MosquittoBroker, scratch: Path, pythonpath: str | None
) -> Worker:
    port = free_port()
    paths = [str(REPOSITORY)] + ([pythonpath] if pythonpath else [])
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "EHEALTHLAB_DATABASE_URL": store.url,
        "EHEALTHLAB_MQTT_HOST": broker.host,
        "EHEALTHLAB_MQTT_PORT": str(broker.port),
        "EHEALTHLAB_MQTT_USERNAME": broker.admin_username,
        "EHEALTHLAB_MQTT_PASSWORD": broker.admin_password,
        "EHEALTHLAB_PATIENT_KEY": "fhir api bench patient key, long enough",
        "EHEALTHLAB_STATE_DIR": str(scratch / "state"),
    }
    http, loop = ("httptools", "uvloop") if pythonpath else ("h11", "asyncio")
    process = subprocess.Popen(
        [sys.executable, __file__, "serve", "--port", str(port), "--http", http, "--loop", loop],
        env=environment,
    )
    deadline = time.monotonic() + 60
    while not accepts_connections(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the API worker did not start")
        time.sleep(0.2)
    return Worker(process, f"http://127.0.0.1:{port}", f"uvicorn ({http}, {loop})")


# -- a run ---------------------------------------------------------------------------------------


def measure_each(
    stores: list[tuple[str, Store]], broker: MosquittoBroker, scratch: Path, args: Any
) -> None:
    """Each store behind a worker of its own; the reports after all measurements."""
    measured = []
    for form, store in stores:
        print(f"\nmeasuring the {form} form ({store.info['readings']:,} readings)", flush=True)
        api = start_worker(store, broker, scratch, args.pythonpath)
        try:
            busy = machine_busy()
            results = measure(store, api, args.duration, args.profile)
            measured.append((form, store, api, results, busy))
        finally:
            api.stop()
    print("\n" + _machine())
    for form, store, api, results, busy in measured:
        report(form, store, api, results, busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    worker = commands.add_parser("serve", help="(internal) one API worker")
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--http", default="h11")
    worker.add_argument("--loop", default="asyncio")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="where stores live")
    parser.add_argument("--reuse", action="store_true", help="take the store a run left")
    parser.add_argument("--days", type=int, default=365, help="days of readings (365: 51 M)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--timescale-url", help="superuser URL of a TimescaleDB server")
    parser.add_argument("--only", choices=("plain", "timescale"), help="one form only")
    parser.add_argument("--build-only", action="store_true", help="build, measure nothing")
    parser.add_argument("--remove", action="store_true", help="delete the stores at the end")
    parser.add_argument("--pythonpath", help="a directory put first on the worker's path")
    parser.add_argument("--profile", type=Path, help="py-spy the worker into this directory")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.http, args.loop)
        return 0
    if shutil.which("wrk") is None:
        parser.error("wrk is missing: apt-get install wrk")
    args.store.mkdir(parents=True, exist_ok=True)
    args.store.chmod(0o755)  # the postgres account reaches its directory inside
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(_machine(), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="ehl-bench-fhir-api-"))
    broker = MosquittoBroker(place_for(ServiceAccount.for_server("mosquitto"), scratch / "mqtt"))
    stores: list[tuple[str, Store]] = []
    try:
        start_on_free_port(broker)
        if args.only != "timescale":
            stores.append(("plain", plain_store(args.store, args.days, args.reuse)))
        if args.timescale_url and args.only != "plain":
            built = timescale_store(args.store, args.timescale_url, args.days, args.reuse)
            stores.append(("timescale", built))
        if not args.build_only:
            measure_each(stores, broker, scratch, args)
    finally:
        broker.remove()
        for form, store in stores:
            store.stop(args.remove)
            where = "removed" if args.remove else "kept (--reuse takes it, --remove deletes it)"
            location = store.server.directory if store.server is not None else DATABASE
            print(f"{form} store {location}: {where}")
        shutil.rmtree(scratch, ignore_errors=True)
        if args.remove and not any(args.store.iterdir()):
            args.store.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
