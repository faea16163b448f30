"""`ehealthlab api [--host H] [--port P]`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from ehealthlab.api.app import check_services, create_app
from ehealthlab.settings import Settings
from ehealthlab.stack.local import settings_with_stack


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
    api.set_defaults(handler=run_api)


def run_api(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    check_services(settings)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0
