"""The HTTP API application, built from one settings object (`create_app(settings)`).

Starting it opens the database pool, gives the platform's MQTT client its role in the
broker's dynamic security (once) and starts the presence thread; stopping it undoes that in
reverse. Responses are serialised by pydantic straight to JSON bytes from each route's
return type (FastAPI's fast path); problem details are written with orjson.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI
from psycopg_pool import ConnectionPool

from ehealthlab import __version__
from ehealthlab.api import problems
from ehealthlab.api.auth import ApiContext
from ehealthlab.api.ratelimit import FailureLimiter
from ehealthlab.errors import (
    AuthenticationError,
    ConfigurationError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from ehealthlab.evaluation import routes as evaluation_routes
from ehealthlab.fhir.bulk import routes as bulk_routes
from ehealthlab.fhir.rest import router as fhir_rest
from ehealthlab.fhir.transaction import routes as transaction_routes
from ehealthlab.gateway import (
    alert_routes,
    device_routes,
    erasure_routes,
    organisation_routes,
    patient_routes,
)
from ehealthlab.gateway.dynsec import DynamicSecurity, DynsecError
from ehealthlab.gateway.pager import Pager, Webhook
from ehealthlab.gateway.presence import Presence
from ehealthlab.ingest.alerts import DEFAULT_RULES, load_rules
from ehealthlab.mqtt import BrokerAddress, MqttConnection, MqttError, again_when_dropped
from ehealthlab.portal import routes as portal_routes
from ehealthlab.settings import Settings
from ehealthlab.store.db import Connection, connect

log = logging.getLogger(__name__)

DESCRIPTION = """\
The E-health Territorial LAB of the Metropolitan City of Turin.

* **Start-ups** register devices and receive MQTT credentials, rotate or revoke them, and
  read why readings were rejected.
* **Health providers** register pseudonymous patients and enrol them with devices.
* **The operator** (CMTo) admits organisations and sees every device.

Every route needs `Authorization: Bearer ehl_…`. Errors are RFC 9457 problem details
(`application/problem+json`).
"""

#: connections the API keeps to PostgreSQL (handlers run in a thread pool of 40)
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10


def create_app(settings: Settings) -> FastAPI:
    """The API for these settings; nothing is opened until the application starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pager = _pager(settings)  # a wrong webhook URL is refused before anything opens
        context = _open(settings)
        presence = Presence(context.broker, settings.require_database_url())
        try:
            presence.start()
            if pager is not None:
                pager.start()
            app.state.context = context
            yield
        finally:
            if pager is not None:
                pager.stop()
            presence.stop()
            context.pool.close()

    app = FastAPI(
        title="ehealthlab API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # exact paths only: `/api/v1/devices/%2F` must not be redirected to the collection
        redirect_slashes=False,
        openapi_tags=[
            {"name": "organisations", "description": "who takes part, and their tokens"},
            {"name": "devices", "description": "start-ups' devices and their MQTT access"},
            {"name": "patients", "description": "providers' pseudonymous patients"},
            {"name": "enrolments", "description": "which device measures which patient"},
            {"name": "alerts", "description": "clinical alerts on a provider's patients"},
            {"name": "mini-pilots", "description": "CMTo's groups of municipalities compared"},
            {"name": "evaluation", "description": "the pilot's indicators, for the operator"},
        ],
    )
    app.state.context = None
    problems.install(app)
    # /api/v1, in the order of the OpenAPI document: who takes part, devices, patients and
    # their enrolments, alerts
    app.include_router(organisation_routes.router)
    app.include_router(device_routes.router)
    app.include_router(patient_routes.router)
    app.include_router(alert_routes.router)
    app.include_router(erasure_routes.router)  # the operator erases a patient (GDPR art. 17)
    app.include_router(evaluation_routes.router)  # mini-pilots (and the evaluation)
    fhir_rest.install(app)  # /fhir, with OperationOutcomes for its errors
    app.include_router(bulk_routes.router)  # $export (docs/fhir-bulk.md)
    app.include_router(transaction_routes.router)  # POST /fhir Bundles (docs/fhir-bulk.md)
    portal_routes.install(app)  # /portal: the web portal (docs/portal.md)
    return app


def check_services(settings: Settings) -> None:
    """Fail with one line naming what is missing (a setting, PostgreSQL, the broker) before
    a server starts, rather than with a traceback from inside its startup."""
    broker, _ = _platform_broker(settings)
    settings.require_patient_key()
    settings.operator_webhook()
    connect(settings).close()
    try:
        again_when_dropped(
            lambda: MqttConnection(broker, f"ehl-api-check-{uuid.uuid4().hex[:8]}").connect()
        ).close()
    except AuthenticationError as exc:
        raise ConfigurationError(
            f"the MQTT broker refused EHEALTHLAB_MQTT_USERNAME/EHEALTHLAB_MQTT_PASSWORD ({exc})"
        ) from None


def _platform_broker(settings: Settings) -> tuple[BrokerAddress, str]:
    """The broker as the platform's administrative client, and that client's username."""
    broker = BrokerAddress.from_settings(settings)
    if broker.username is None:
        raise ConfigurationError(
            "no MQTT administrative client: set EHEALTHLAB_MQTT_USERNAME and "
            "EHEALTHLAB_MQTT_PASSWORD or start the local stack with `ehealthlab stack up`"
        )
    return broker, broker.username


def _pager(settings: Settings) -> Pager | None:
    """The pager for the operator's webhook; None, with one warning, when none is set."""
    url = settings.operator_webhook()
    if url is None:
        log.warning(
            "no EHEALTHLAB_OPERATOR_WEBHOOK_URL: pages for the operator (the broker's drops) are"
            " kept in the store and shown on the operations dashboard, and nobody is paged"
        )
        return None
    return Pager(settings.require_database_url(), Webhook(url))


def _open(settings: Settings) -> ApiContext:
    """Check the settings, open the pool and prepare the broker, or say what is missing."""
    patient_key = settings.require_patient_key()
    broker, username = _platform_broker(settings)
    pool: ConnectionPool[Connection] = ConnectionPool(
        settings.require_database_url(),
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        kwargs={"autocommit": True},
        check=ConnectionPool.check_connection,
        open=False,
        name="ehl-api",
    )
    try:
        pool.open(wait=True, timeout=10)
    except psycopg.OperationalError:
        pool.close()
        raise ServiceUnavailableError(
            "cannot reach PostgreSQL; start the local stack with `ehealthlab stack up` or fix "
            "EHEALTHLAB_DATABASE_URL"
        ) from None
    try:
        with DynamicSecurity(broker) as dynsec:
            dynsec.ensure_platform_role(username)
    except (DynsecError, MqttError, AuthenticationError, PermissionDeniedError) as exc:
        pool.close()
        raise ServiceUnavailableError(f"the MQTT broker's dynamic security: {exc}") from exc
    except ServiceUnavailableError:
        pool.close()
        raise
    rules = DEFAULT_RULES if settings.alert_rules is None else load_rules(settings.alert_rules)
    return ApiContext(
        settings=settings,
        pool=pool,
        broker=broker,
        patient_key=patient_key,
        alert_rules=rules,
        failures=FailureLimiter.for_workers(settings.api_workers),
    )
