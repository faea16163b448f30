"""FHIR Bulk Data export jobs against a real PostgreSQL (and the broker the API needs):
cancelled, failed, expired and too many at once, through the HTTP API; and a job's life in
the runner: a stopping process gives its job back and another resumes it, a cancelled job is
not run, files are split at the configured number of lines, and the background writer writes
every line in order.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir_bulk_fixtures import (
    ALL_LOCATIONS,
    DEADLINE_S,
    expected,
    expected_observations,
    kick_off,
    wait,
    world,
)
from gateway_fixtures import Cast, cast

from ehealthlab.fhir.bulk import routes, store
from ehealthlab.fhir.bulk.export import ExportRequest
from ehealthlab.fhir.bulk.worker import (
    BackgroundWriter,
    ExportConfig,
    ExportJobRun,
    ExportRunner,
    NdjsonFiles,
    job_directory,
)
from ehealthlab.settings import Settings

__all__ = ["cast", "world"]


# -- cancel, failure, expiry, limits ---------------------------------------------------------------


def test_delete_cancels_an_export_and_discards_its_files(client, cast, world, settings):
    status_url = kick_off(client, cast.h("operator"), "/fhir/$export")
    job_id = uuid.UUID(status_url.rsplit("/", 1)[1])
    cancelled = client.delete(status_url, headers=cast.h("operator"))
    assert cancelled.status_code == 202
    assert client.get(status_url, headers=cast.h("operator")).status_code == 404
    assert client.delete(status_url, headers=cast.h("operator")).status_code == 404
    # the job, wherever it was, stops and leaves no file behind
    deadline = time.monotonic() + DEADLINE_S
    while job_directory(settings, job_id).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job_directory(settings, job_id).exists()
    # a completed export's files are discarded by DELETE
    done_url = kick_off(client, cast.h("operator"), "/fhir/$export", _type="Organization")
    file_url = wait(client, cast.h("operator"), done_url).json()["output"][0]["url"]
    assert client.get(file_url, headers=cast.h("operator")).status_code == 200
    assert client.delete(done_url, headers=cast.h("operator")).status_code == 202
    assert client.get(file_url, headers=cast.h("operator")).status_code == 404
    assert not job_directory(settings, uuid.UUID(done_url.rsplit("/", 1)[1])).exists()


def test_a_failed_export_answers_500_with_an_operation_outcome(client, cast, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Location",), None))
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        store.fail_job(conn, job.id, None, "the export failed: disk full")
    answer = client.get(f"/fhir/$export-poll-status/{job.id}", headers=cast.h("operator"))
    assert answer.status_code == 500
    outcome = OperationOutcome.model_validate(answer.json())
    assert outcome.issue[0].diagnostics == "the export failed: disk full"


def test_an_expired_export_is_gone(client, cast, world, settings):
    status_url = kick_off(client, cast.h("operator"), "/fhir/$export", _type="Organization")
    result = wait(client, cast.h("operator"), status_url).json()
    job_id = uuid.UUID(status_url.rsplit("/", 1)[1])
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        conn.execute(
            "UPDATE fhir_export_jobs SET expires_at = now() - interval '1 second' WHERE id = %s",
            (job_id,),
        )
    assert client.get(status_url, headers=cast.h("operator")).status_code == 404
    assert client.get(result["output"][0]["url"], headers=cast.h("operator")).status_code == 404
    ExportRunner(settings).sweep()  # what the runner does every few seconds
    assert not job_directory(settings, job_id).exists()


def test_too_many_exports_at_once_are_429(client, cast, settings):
    waiting = [
        new_job(
            settings,
            cast,
            "q",
            ExportRequest("patient", ("Patient",), None),
            provider=uuid.UUID(cast.organisations["q"]),
        )
        for _ in range(routes.MAX_ACTIVE_EXPORTS)
    ]
    answer = client.get("/fhir/Patient/$export", headers={**cast.h("q"), "Prefer": "respond-async"})
    assert answer.status_code == 429
    assert answer.headers["Retry-After"].isdigit()
    OperationOutcome.model_validate(answer.json())
    for job in waiting:
        assert (
            client.delete(f"/fhir/$export-poll-status/{job.id}", headers=cast.h("q")).status_code
            == 202
        )
    assert (
        client.get(
            "/fhir/Patient/$export", headers={**cast.h("q"), "Prefer": "respond-async"}
        ).status_code
        == 202
    )


def new_job(
    settings: Settings,
    cast: Cast,
    who: str,
    request: ExportRequest,
    provider: uuid.UUID | None = None,
) -> store.ExportJob:
    """A queued job written straight into the store (no runner sees it until a sweep)."""
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        return store.create_job(
            conn,
            uuid.UUID(cast.organisations.get(who) or operator_id(conn)),
            request,
            provider,
            "http://testserver/fhir/$export",
        )


def operator_id(conn) -> str:
    return str(conn.execute("SELECT id FROM organisations WHERE kind = 'operator'").fetchone()[0])


# -- a job's life: stopping, resuming ------------------------------------------------------


def test_a_stopping_process_gives_its_job_back_and_another_resumes_it(cast, world, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Observation",), None))
    stop = threading.Event()
    stop.set()  # the process is stopping as the job starts
    config = ExportConfig(batch_rows=2)
    ExportJobRun(settings, job.id, "dying-process", stop, config).run()
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        back = store.get_job(conn, job.id)
        assert back is not None and back.status == "queued" and back.attempts == 1
        assert not job_directory(settings, job.id).exists()
        # a process that dies leaves its job "running", silent: a sweep takes it up again
        conn.execute(
            "UPDATE fhir_export_jobs SET status = 'running', worker = 'dead',"
            " heartbeat_at = now() - interval '1 hour' WHERE id = %s",
            (job.id,),
        )
    runner = ExportRunner(settings, ExportConfig(batch_rows=2))
    try:
        runner.sweep()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with psycopg.connect(settings.require_database_url()) as conn:
                done = store.get_job(conn, job.id)
            if done is not None and done.status not in ("queued", "running"):
                break
            time.sleep(0.05)
    finally:
        runner.close()
    assert done is not None and done.status == "completed" and done.attempts == 2
    assert sum(f.count for f in done.export_files) == len(expected_observations(settings))


def test_a_cancelled_job_is_not_run(cast, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Location",), None))
    with psycopg.connect(settings.require_database_url(), autocommit=True) as conn:
        assert store.cancel_job(conn, job.id, job.organisation_id)
    ExportJobRun(settings, job.id, "w", threading.Event(), ExportConfig()).run()
    assert not job_directory(settings, job.id).exists()


def test_files_are_split_at_the_configured_number_of_lines(cast, world, settings):
    job = new_job(settings, cast, "operator", ExportRequest("system", ("Location",), None))
    ExportJobRun(settings, job.id, "w", threading.Event(), ExportConfig(file_lines=100)).run()
    with psycopg.connect(settings.require_database_url()) as conn:
        done = store.get_job(conn, job.id)
    assert done is not None and done.status == "completed"
    assert [(f.name, f.count) for f in done.export_files] == [
        ("Location.1.ndjson", 100),
        ("Location.2.ndjson", 100),
        ("Location.3.ndjson", 100),
        ("Location.4.ndjson", 12),
    ]
    lines = b"".join(
        (job_directory(settings, job.id) / f.name).read_bytes() for f in done.export_files
    ).splitlines()
    assert set(lines) == expected(settings, "Location", ALL_LOCATIONS)


def test_the_background_writer_writes_every_line_in_order_and_reports_failures(tmp_path):
    files = NdjsonFiles(tmp_path, "Patient", file_lines=3)
    out = BackgroundWriter(files, depth=1)
    for start in range(0, 10, 2):
        out.write([f"{n}".encode() for n in range(start, start + 2)])
    out.close()
    assert [(f.name, f.count) for f in files.files] == [
        ("Patient.1.ndjson", 3),
        ("Patient.2.ndjson", 3),
        ("Patient.3.ndjson", 3),
        ("Patient.4.ndjson", 1),
    ]
    written = b"".join((tmp_path / f.name).read_bytes() for f in files.files)
    assert written == b"".join(f"{n}\n".encode() for n in range(10))
    broken = BackgroundWriter(NdjsonFiles(tmp_path / "missing", "Patient", file_lines=3))
    broken.write([b"1"])
    with pytest.raises(OSError, match="missing"):
        try:
            for _ in range(100):  # the failure surfaces at a later write, or at close
                broken.write([b"2"])
        finally:
            broken.close()
