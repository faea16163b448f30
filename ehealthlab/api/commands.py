"""`ehealthlab api [--host H] [--port P | --fd FD] [--workers N]`: the HTTP API, by uvicorn."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from ehealthlab.api.app import check_services, create_app
from ehealthlab.errors import ConfigurationError
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack

#: what each of several worker processes imports to build its own application
APP_FACTORY = f"{__name__}:app_from_environment"


#: how long uvicorn's supervisor waits for a worker to answer its health check before killing
#: it (uvicorn's default: 5 s). A new worker imports the whole command line first — 2.5 s on
#: an idle 2-core machine, 5 to 17 s with its cores busy — so at 5 s a busy host killed and
#: restarted workers again and again and never served.
WORKER_HEALTHCHECK_S = 60


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    api = subparsers.add_parser(
        "api",
        help="serve the HTTP API",
        description="Serve the HTTP API (/api/v1, OpenAPI at /docs) until stopped. It needs "
        "the database and the MQTT broker: the local stack's (`ehealthlab stack up`) or those "
        "named by EHEALTHLAB_DATABASE_URL and EHEALTHLAB_MQTT_*.",
    )
    api.add_argument(
        "--host",
        help="address to listen on (default: EHEALTHLAB_API_HOST, 127.0.0.1; "
        "use 0.0.0.0 only behind a TLS proxy)",
    )
    api.add_argument(
        "--port", type=int, help="port to listen on (default: EHEALTHLAB_API_PORT, 8000)"
    )
    api.add_argument(
        "--fd",
        type=int,
        metavar="FD",
        help="serve on this listening socket, inherited from the process that started the API "
        "(`ehealthlab stack up --services` binds it, so no other process can take the port), "
        "instead of binding --host and --port",
    )
    api.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the port, each with its own database pool, presence "
        "thread and 1/N of the failed-token budget (default: EHEALTHLAB_API_WORKERS, 1: one "
        "process, as for development)",
    )
    api.set_defaults(handler=run_api)


def app_from_environment() -> FastAPI:
    """The application of one worker process, from the environment (and the local stack)."""
    return create_app(settings_with_stack(Settings()))


def inherited_listener(fd: int) -> socket.socket:
    """The listening socket `--fd` names; ConfigurationError (one line) when it is not one."""
    try:
        listener = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigurationError(f"--fd {fd}: not an open socket ({exc.strerror})") from None
    if not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        listener.detach()  # not ours to close
        raise ConfigurationError(f"--fd {fd}: the socket is not listening")
    return listener


def serve_on_socket(settings: Settings, listener: socket.socket, workers: int) -> int:
    """uvicorn on a socket already listening, as `uvicorn.run` serves on one it binds itself.

    Not `uvicorn.run(fd=...)`: uvicorn takes such a descriptor for a Unix socket, and the
    peer address of every TCP connection (the failed-token budget is per address) would be
    lost. `socket.socket(fileno=...)` reads the family from the descriptor. Returns the exit
    status, 3 when the application did not start (as `uvicorn.run`).
    """
    if workers == 1:
        server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="info"))
        server.run(sockets=[listener])
        return 0 if server.started else 3
    os.environ["EHEALTHLAB_API_WORKERS"] = str(workers)
    config = uvicorn.Config(
        APP_FACTORY, factory=True, workers=workers, log_level="info",
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )  # fmt: skip
    Multiprocess(config, sockets=[listener]).run()
    return 0


def run_api(args: argparse.Namespace, settings: Settings) -> int:
    workers = settings.api_workers if args.workers is None else args.workers
    if workers < 1 or workers > 64:
        raise ConfigurationError("--workers must be between 1 and 64")
    settings = settings_with_stack(settings.model_copy(update={"api_workers": workers}))
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    listener = inherited_listener(args.fd) if args.fd is not None else None
    check_services(settings)
    if listener is not None:
        return serve_on_socket(settings, listener, workers)
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return 0
    # several processes need the application by name: uvicorn's supervisor spawns each worker,
    # which imports the factory and builds its app from the same environment as this process,
    # told how many they are (each takes its share of the failed-token budget)
    os.environ["EHEALTHLAB_API_WORKERS"] = str(workers)
    uvicorn.run(
        APP_FACTORY, factory=True, workers=workers, host=host, port=port, log_level="info",
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )  # fmt: skip
    return 0
