"""Running `$export` jobs: NDJSON files written in background threads of the API process.

A job reads every type it exports from one REPEATABLE READ snapshot (the manifest's
`transactionTime`) through server-side cursors, a batch at a time, and writes each resource
as one line of its type's file under `{state_dir}/exports/{job id}/`, so memory stays bounded
whatever the size of the export. It reports progress (and that it lives) on a second
connection, and stops at the next batch when the job is cancelled or the process stops.

A job is never half done: the files are listed only when the job completes, and a job whose
process dies (or stops) is taken up again from the beginning by any API process that notices
(`ExportRunner`'s sweep), at most `MAX_ATTEMPTS` times, then failed.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import psycopg

from ehealthlab.errors import EhealthlabError
from ehealthlab.fhir.bulk import store
from ehealthlab.fhir.bulk.export import (
    EXPORT_LIFETIME,
    FILE_LINES,
    OUTCOME_TYPE,
    ExportFile,
    file_name,
    ignored_outcomes,
    observations_ndjson,
)
from ehealthlab.fhir.bulk.store import ExportJob
from ehealthlab.fhir.mapping.fast import (
    Json,
    device_json,
    dumps,
    location_json,
    organization_json,
    patient_json,
)
from ehealthlab.fhir.mapping.rows import (
    DeviceRecord,
    MunicipalityRecord,
    OrganisationRecord,
    PatientRecord,
    ReadingRecord,
)
from ehealthlab.settings import Settings
from ehealthlab.store.db import Connection, connect

log = logging.getLogger("ehealthlab.fhir.export")

#: resources written to a file at once
_WRITE_LINES = 1000
#: a job is tried this many times (a process stopping or dying counts), then failed
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class ExportConfig:
    """How exports run; the defaults suit the API process."""

    #: jobs run at once by one process (each holds a database connection and a core)
    workers: int = 1
    #: how often a running job says it is alive and how far it got
    heartbeat_s: float = 2.0
    #: a running job silent for this long is presumed dead and run again
    stale_after_s: float = 30.0
    #: how often a process looks for jobs nobody runs, and for expired files
    sweep_s: float = 10.0
    file_lines: int = FILE_LINES
    batch_rows: int = store.BATCH_ROWS
    lifetime: timedelta = EXPORT_LIFETIME


def exports_directory(settings: Settings) -> Path:
    """Where export files live: under the state directory, one folder per job."""
    return settings.exports_dir


def job_directory(settings: Settings, job_id: UUID) -> Path:
    return exports_directory(settings) / str(job_id)


class _StopError(EhealthlabError):
    """The job must stop: cancelled, taken over, or the process is stopping."""


# -- resources from rows ------------------------------------------------------------------


def _records(record: Callable[..., Any], batches: Iterable[list[tuple[Any, ...]]]) -> Iterator[Any]:
    for rows in batches:
        for row in rows:
            yield record(*row)


def resources(resource_type: str, batches: Iterable[list[tuple[Any, ...]]]) -> Iterator[Json]:
    """The FHIR JSON of one type's rows (as store.stream_rows gives them)."""
    if resource_type == "Observation":
        return observations_ndjson(_records(ReadingRecord, batches))
    if resource_type == "Patient":
        return map(patient_json, _records(PatientRecord, batches))
    if resource_type == "Device":
        return map(device_json, _records(DeviceRecord, batches))
    if resource_type == "Organization":
        return map(organization_json, _records(OrganisationRecord, batches))
    if resource_type == "Location":
        return map(location_json, _records(MunicipalityRecord, batches))
    raise ValueError(f"{resource_type} is not exported")


class NdjsonFiles:
    """One type's NDJSON files in a job's directory, a new file every `file_lines` lines."""

    def __init__(self, directory: Path, resource_type: str, file_lines: int) -> None:
        self._directory = directory
        self._type = resource_type
        self._file_lines = file_lines
        self._out: IO[bytes] | None = None
        self._lines = 0
        self.files: list[ExportFile] = []

    def write(self, lines: list[bytes]) -> None:
        """Write these lines (one resource each), in as few writes as the files allow."""
        start = 0
        while start < len(lines):
            out = self._out
            if out is None or self._lines == self._file_lines:
                out = self._next_file()
            part = lines[start : start + self._file_lines - self._lines]
            out.write(b"\n".join(part))
            out.write(b"\n")
            self._lines += len(part)
            start += len(part)

    def _next_file(self) -> IO[bytes]:
        self.close()
        name = file_name(self._type, len(self.files) + 1)
        out = self._out = (self._directory / name).open("wb", buffering=1 << 20)
        self._lines = 0
        self.files.append(ExportFile(self._type, name, 0))
        return out

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            last = self.files[-1]
            self.files[-1] = ExportFile(last.type, last.name, self._lines)


class BackgroundWriter:
    """Hands batches of lines to a thread that writes them: a write releases the GIL while
    the kernel copies the bytes, so the next batch is mapped meanwhile. At most `depth`
    batches wait, so memory stays bounded."""

    def __init__(self, files: NdjsonFiles, depth: int = 4) -> None:
        self._files = files
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(depth)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="ehl-export-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (lines := self._queue.get()) is not None:
            if self._error is None:  # after a failure, only drain: the producer must not block
                try:
                    self._files.write(lines)
                except OSError as exc:
                    self._error = exc

    def write(self, lines: list[bytes]) -> None:
        """Queue these lines (the list is the writer's from now on)."""
        if self._error is not None:
            raise self._error
        self._queue.put(lines)

    def close(self) -> None:
        """Write what is queued, close the files; the first write error, if any."""
        self._queue.put(None)
        self._thread.join()
        self._files.close()
        if self._error is not None:
            raise self._error


# -- one job ---------------------------------------------------------------------------------


class ExportJobRun:
    """One attempt at one job, in the calling thread, with a pulse thread beside it."""

    def __init__(
        self,
        settings: Settings,
        job_id: UUID,
        worker: str,
        stop: threading.Event,
        config: ExportConfig,
    ) -> None:
        self.settings = settings
        self.job_id = job_id
        self.worker = worker
        self.config = config
        #: the process is stopping: give the job back
        self._stop = stop
        #: the job is no longer ours (cancelled, or taken over)
        self._lost = threading.Event()
        #: the pulse has ended, once the export has
        self._done = threading.Event()
        self._source: Connection | None = None
        self._last_beat = 0.0
        #: resources written so far (read by the pulse thread)
        self.written = 0

    def run(self) -> None:
        """Claim the job and export it; any outcome is recorded on the job's row."""
        with connect(self.settings, autocommit=True) as control:
            job = store.claim_job(
                control,
                self.job_id,
                self.worker,
                stale_after=timedelta(seconds=self.config.stale_after_s),
                max_attempts=MAX_ATTEMPTS,
            )
            if job is None:  # someone else's, finished, or cancelled
                return
            directory = job_directory(self.settings, job.id)
            pulse = threading.Thread(
                target=self._pulse, name=f"ehl-export-pulse-{job.id}", daemon=True
            )
            pulse.start()
            try:
                self._export(job, directory, control)
            except (EhealthlabError, psycopg.Error, OSError) as exc:
                shutil.rmtree(directory, ignore_errors=True)
                if isinstance(exc, _StopError) or self._halted():
                    if self._stop.is_set() and not self._lost.is_set():
                        # the process is stopping: the job runs again later
                        store.release_job(control, job.id, self.worker)
                    return
                log.exception("export %s failed", job.id)
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                store.fail_job(control, job.id, self.worker, f"the export failed: {reason}")
            except Exception:  # a bug: retrying would only meet it again
                shutil.rmtree(directory, ignore_errors=True)
                log.exception("export %s: unexpected failure", job.id)
                store.fail_job(
                    control,
                    job.id,
                    self.worker,
                    "the export failed: an internal error (the operator has the details)",
                )
            finally:
                self._done.set()
                pulse.join()

    def _halted(self) -> bool:
        return self._stop.is_set() or self._lost.is_set()

    def _pulse(self) -> None:
        """Say the job lives (and how far it got) until it ends; when it is no longer ours,
        or the process stops, interrupt it, even in the middle of a long query."""
        try:
            with connect(self.settings, autocommit=True) as conn:
                while not self._done.wait(min(self.config.heartbeat_s, 0.2)):
                    beat = not self._stop.is_set() and self._beat_due()
                    if beat and not store.heartbeat(conn, self.job_id, self.worker, self.written):
                        self._lost.set()
                    if self._halted():
                        source = self._source
                        if source is not None:
                            source.cancel_safe()
                        return
        except (EhealthlabError, psycopg.Error) as exc:
            # the job's own queries will meet the same trouble and fail it
            log.warning("export %s: heartbeat failed (%s)", self.job_id, exc)

    def _beat_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_beat < self.config.heartbeat_s:
            return False
        self._last_beat = now
        return True

    def _export(self, job: ExportJob, directory: Path, control: Connection) -> None:
        shutil.rmtree(directory, ignore_errors=True)  # a previous attempt's leftovers
        directory.mkdir(parents=True)
        files: list[ExportFile] = []
        with connect(self.settings) as source:
            source.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            source.read_only = True
            self._source = source
            with source.transaction():
                # the snapshot is taken at the first statement: this one
                row = source.execute("SELECT now()").fetchone()
                if row is None:
                    raise RuntimeError("the database returned no time")
                transaction_time = row[0]
                source.execute("SET LOCAL work_mem = '64MB'")  # the Observations' sort
                for resource_type in job.types:
                    files.extend(self._write_type(source, job, resource_type, directory))
            self._source = None
        files.extend(self._write_outcomes(job, directory))
        if self._halted() or not store.complete_job(
            control,
            job.id,
            self.worker,
            transaction_time=transaction_time,
            files=files,
            lifetime=self.config.lifetime,
        ):
            raise _StopError("the export was stopped")

    def _write_type(
        self, source: Connection, job: ExportJob, resource_type: str, directory: Path
    ) -> list[ExportFile]:
        batches = store.stream_rows(
            source, resource_type, job.scope, job.since, batch_rows=self.config.batch_rows
        )
        files = NdjsonFiles(directory, resource_type, self.config.file_lines)
        out = BackgroundWriter(files)
        lines: list[bytes] = []
        try:
            for resource in resources(resource_type, self._checked(batches)):
                lines.append(dumps(resource))
                if len(lines) == _WRITE_LINES:
                    out.write(lines)
                    self.written += len(lines)
                    lines = []
            out.write(lines)
            self.written += len(lines)
        finally:
            out.close()
        return files.files

    def _checked(self, batches: Iterator[list[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
        for rows in batches:
            if self._halted():
                raise _StopError("the export was stopped")
            yield rows

    def _write_outcomes(self, job: ExportJob, directory: Path) -> list[ExportFile]:
        outcomes = ignored_outcomes(job.ignored)
        if not outcomes:
            return []
        out = NdjsonFiles(directory, OUTCOME_TYPE, self.config.file_lines)
        out.write([dumps(outcome) for outcome in outcomes])
        out.close()
        return out.files


# -- the process's runner --------------------------------------------------------------------


class ExportRunner:
    """The export jobs of one API process: a small thread pool, and a sweeper that takes up
    jobs nobody runs and deletes files nobody may download any more."""

    def __init__(self, settings: Settings, config: ExportConfig | None = None) -> None:
        self.settings = settings
        self.config = config or ExportConfig()
        self.name = f"export-{uuid.uuid4().hex[:8]}"
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="ehl-export")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[UUID] = set()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="ehl-export-sweep", daemon=True
        )

    def start(self) -> None:
        self._sweeper.start()

    def submit(self, job_id: UUID) -> None:
        """Run the job in the background (once, however often it is submitted)."""
        with self._lock:
            if job_id in self._pending or self._stop.is_set():
                return
            self._pending.add(job_id)
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: UUID) -> None:
        try:
            ExportJobRun(self.settings, job_id, self.name, self._stop, self.config).run()
        except Exception:  # the pool would swallow it: a job must never kill the thread
            log.exception("export %s: unexpected failure", job_id)
        finally:
            with self._lock:
                self._pending.discard(job_id)

    def sweep(self) -> None:
        """Submit jobs nobody runs; delete the files of expired, cancelled and failed jobs."""
        with connect(self.settings, autocommit=True) as conn:
            waiting = store.jobs_to_resume(
                conn,
                stale_after=timedelta(seconds=self.config.stale_after_s),
                max_attempts=MAX_ATTEMPTS,
            )
            finished = store.expired_jobs(conn)
        for job_id in waiting:
            self.submit(job_id)
        for job_id in finished:
            directory = job_directory(self.settings, job_id)
            if directory.exists():
                shutil.rmtree(directory, ignore_errors=True)

    def _sweep_loop(self) -> None:
        while True:
            try:
                self.sweep()
            except (EhealthlabError, psycopg.Error, OSError) as exc:
                log.warning("exports: sweep failed (%s); retrying", exc)
            if self._stop.wait(self.config.sweep_s):
                return

    def close(self) -> None:
        """Stop: running jobs stop at their next batch and go back to the queue."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._sweeper.is_alive():
            self._sweeper.join()
