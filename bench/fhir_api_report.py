"""bench/fhir_api.py's tables: one per store form, with the goals' verdicts and the audit
trail, and the line describing the machine and the commit."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from fhir_api_load import Result
from fhir_api_measure import Audited
from fhir_api_store import Store
from fhir_api_worker import REPOSITORY, Worker


def report(
    form: str, store: Store, worker: Worker, measured: tuple[list[Result], Audited], idle: float
) -> None:
    results, audited = measured
    info = store.info
    print(
        f"\n{form}: {info['readings']:,} readings ({info['bytes'] / 2**30:.1f} GiB), built"
        f" {info['built']}; {worker.server}, one worker; machine {idle:.0f} % busy before"
    )
    print(
        f"| {'measurement':<38} | conn | {'req/s':>7} | p50 ms | p95 ms | p99 ms"
        " | worker % | wrk % | machine % |"
    )
    print(
        f"|{'-' * 40}|-----:|--------:|-------:|-------:|-------:|---------:|------:|----------:|"
    )
    for r in results:
        notes = ("  " + "; ".join(r.notes)) if r.notes else ""
        print(
            f"| {r.label:<38} | {r.connections:>4} | {r.rate:>7,.0f} | {r.p50_ms:>6.1f}"
            f" | {r.p95_ms:>6.1f} | {r.p99_ms:>6.1f} | {r.worker_cpu:>8.0f} | {r.client_cpu:>5.0f}"
            f" | {r.machine_busy:>9.0f} |{notes}"
        )
    by = {r.label: r for r in results}
    last, lastn = by["last 1,000 Observations"], by["$lastn (max=1)"]
    first, models = by["search, first page (20)"], by["baseline: first page, R4B models"]
    last_models = by["baseline: last 1,000, R4B models"]
    ceiling = by["ladder: fixed Bundle bytes (ceiling)"]
    print(
        f"p95 under 50 ms: last 1,000 {last.p95_ms:.1f} ms"
        f" ({'met' if last.p95_ms < 50 else 'NOT met'}), $lastn {lastn.p95_ms:.1f} ms"
        f" ({'met' if lastn.p95_ms < 50 else 'NOT met'}); 5,000 req/s for 20 entries:"
        f" {first.rate:,.0f} ({'met' if first.rate >= 5000 else 'NOT met'});"
        f" fast path / R4B models: {first.rate / models.rate:.1f}x on 20 entries,"
        f" {last_models.p50_ms / last.p50_ms:.1f}x on 1,000 (p50);"
        f" first page / ceiling: {100 * first.rate / ceiling.rate:.0f} %"
    )
    print(
        f"audit trail: {audited.rows:,} events written for {audited.requests:,} requests of"
        f" patient data answered (up to {audited.in_flight} more may have been answered after"
        " wrk stopped counting)"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return (
        f"{os.cpu_count()} CPU ({model}), {memory:.0f} GiB, Python {platform.python_version()},"
        f" commit {_commit()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
