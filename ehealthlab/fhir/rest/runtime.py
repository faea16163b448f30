"""What the handlers of the read and search API run on: the router's own asynchronous
connection pool and audit writer, opened by its lifespan, and how a request's statements run
on them.

What makes a request cheap (docs/fhir.md, "Performance"): the SQL goes over connections of
the router's own asynchronous pool, all of a request's statements in one round trip
(sql.run); and reads of patient data are audited by an AuditWriter, off the request path.
The router's lifespan opens the pool and runs the writer while the application runs, and
tunes the process's garbage collector once (ehealthlab.gc_tuning: the p95 of a page of 1,000
Observations went from 60 ms to 19 ms).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool

from ehealthlab.api.auth import ApiContext
from ehealthlab.errors import ServiceUnavailableError
from ehealthlab.fhir.audit import AuditWriter
from ehealthlab.fhir.search import sql
from ehealthlab.fhir.search.sql import AsyncConnection, Statement
from ehealthlab.gc_tuning import tune_garbage_collector

log = logging.getLogger(__name__)

T = TypeVar("T")

#: connections of the router's own pool (each worker process has one)
POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 8
#: seconds a request waits for a connection before it is answered 503
POOL_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class FhirResources:
    """What the router opens for itself while the application runs."""

    pool: AsyncConnectionPool[AsyncConnection]
    audit: AuditWriter


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the pool and start the audit writer once the application's own pool is open
    (this lifespan nests in the application's); drain the writer before that pool closes."""
    context = getattr(app.state, "context", None)
    app.state.fhir = None
    if not isinstance(context, ApiContext):
        yield
        return
    pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
        context.settings.require_database_url(),
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        timeout=POOL_TIMEOUT,
        # UTC: times come as fast.py writes them, with nothing to convert
        kwargs={"autocommit": True, "options": f"{sql.GENERIC_PLANS} -c TimeZone=UTC"},
        open=False,
        name="ehl-fhir",
    )
    await pool.open()
    tune_garbage_collector()
    writer = AuditWriter(context.pool).start()
    app.state.fhir = FhirResources(pool, writer)
    try:
        yield
    finally:
        app.state.fhir = None
        await run_in_threadpool(writer.close)
        await pool.close()


def resources_of(request: Request) -> FhirResources:
    resources = getattr(request.app.state, "fhir", None)
    if not isinstance(resources, FhirResources):  # an application built without create_app
        raise ServiceUnavailableError("the API is not started")
    return resources


async def run_all(resources: FhirResources, *statements: Statement[Any]) -> list[Any]:
    """The statements' results. Connections are not checked when taken from the pool (a
    round trip per request); when one fails, the pool checks the others, dropping those the
    server closed (a restart), and the request runs once more. A database that cannot be
    reached is a 503."""
    for attempt in (1, 2):
        try:
            async with resources.pool.connection() as conn:
                return await sql.run(conn, statements)
        except PoolTimeout as exc:
            raise ServiceUnavailableError("the database is busy; try again") from exc
        except psycopg.OperationalError as exc:
            if attempt == 1:
                log.warning("a database connection failed (%s); checking the others", exc)
                await resources.pool.check()
                continue
            message = (str(exc).strip().splitlines() or ["no answer"])[0]
            raise ServiceUnavailableError(f"the database is unavailable ({message})") from exc
    raise AssertionError("unreachable")


async def run_one(resources: FhirResources, statement: Statement[T]) -> T:
    [result] = await run_all(resources, statement)
    return result  # type: ignore[no-any-return]
