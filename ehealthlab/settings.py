"""The one settings object, read from EHEALTHLAB_* variables and passed explicitly.

Nothing else in the package reads the environment. Secrets have no defaults: the local
stack generates its own and `ehealthlab stack env` prints them; anywhere else they must be
set, and the accessor that needs one says which variable is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ehealthlab.errors import ConfigurationError
from ehealthlab.gateway.operator_pages import webhook_url

StoreForm = Literal["auto", "plain", "timescale"]


class Settings(BaseSettings):
    """Where the servers are, how to reach them, and the secrets the platform holds."""

    model_config = SettingsConfigDict(env_prefix="EHEALTHLAB_", extra="ignore", frozen=True)

    #: where the local stack keeps its data and configuration; two directories, two stacks
    state_dir: Path = Path(".ehealthlab")

    #: PostgreSQL (with or without TimescaleDB); unset means "the local stack's"
    database_url: SecretStr | None = None
    #: which physical form of the store to build: auto picks TimescaleDB when it can
    store_form: StoreForm = "auto"

    #: the MQTT broker; unset means "the local stack's"
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    #: the gateway's administrative MQTT client (dynamic security)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False
    #: the broker as devices reach it, handed out with their credentials (a production broker
    #: has a public name and a TLS port the platform's own clients do not use); unset: the above
    mqtt_public_host: str | None = None
    mqtt_public_port: int | None = None
    mqtt_public_tls: bool | None = None
    #: whether the broker stamps each message with its receive time (the ehl_receive_stamp
    #: plugin, docs/ingest.md). True: ingest checks at start that it does and refuses to
    #: start if not. False: no stamp a message carries is believed, and receive times are
    #: when ingest reads the message
    broker_receive_stamp: bool = True

    #: where `ehealthlab api` listens, and where commands that act through it find it
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str | None = None
    #: worker processes of `ehealthlab api` (its --workers, which sets this for the workers it
    #: starts): each keeps 1/N of the failed-token budget (api/ratelimit.py)
    api_workers: int = Field(default=1, ge=1, le=64)
    #: an API token for commands that act through the HTTP API
    token: SecretStr | None = None

    #: a TOML file overriding the default clinical alert rules (docs/ingest.md)
    alert_rules: Path | None = None

    #: the economic model's parameters (docs/indicators.md); unset: the shipped defaults
    economics_file: Path | None = None
    #: published outputs show only the patient band of a group with fewer patients
    min_group_patients: int = Field(default=5, ge=1)
    #: base seed of the evaluation's bootstrap intervals (same seed, same intervals)
    evaluation_seed: int = Field(default=20260101, ge=0)

    #: key of the keyed hash that replaces patient identifiers (never stored in clear)
    patient_key: SecretStr | None = None
    #: whole pilot days of data kept by `ehealthlab db retention` (today and this many before
    #: it; docs/reliability-privacy.md); unset: retention runs only with --older-than
    retention_days: int | None = Field(default=None, ge=1)

    #: where the operator is paged (gateway/pager.py): an http(s) URL taking a JSON POST, such
    #: as a chat's incoming webhook; a secret, since such URLs carry their own key. Unset:
    #: pages are kept and shown on the operations dashboard, and nobody is paged
    operator_webhook_url: SecretStr | None = None

    #: key signing the web portal's session cookies and CSRF tokens; unset: derived from the
    #: patient key (so every API worker agrees without another secret to distribute)
    portal_secret: SecretStr | None = None
    #: how long a portal login lasts before the API token must be given again
    portal_session_hours: float = Field(default=8.0, gt=0, le=24 * 7)

    @property
    def exports_dir(self) -> Path:
        """Where FHIR bulk exports write their files: data copied out of the database, so a
        purged stack deletes them with it."""
        return self.state_dir / "exports"

    def uses_external_database(self) -> bool:
        """True when the database is given from outside, so the stack starts none."""
        return self.database_url is not None

    def uses_external_broker(self) -> bool:
        """True when the broker is given from outside, so the stack starts none."""
        return self.mqtt_host is not None

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigurationError(
                "no database: set EHEALTHLAB_DATABASE_URL or start the local stack "
                "with `ehealthlab stack up`"
            )
        return self.database_url.get_secret_value()

    def require_mqtt(self) -> tuple[str, int]:
        if self.mqtt_host is None or self.mqtt_port is None:
            raise ConfigurationError(
                "no MQTT broker: set EHEALTHLAB_MQTT_HOST and EHEALTHLAB_MQTT_PORT or start "
                "the local stack with `ehealthlab stack up`"
            )
        return self.mqtt_host, self.mqtt_port

    def device_broker(self) -> tuple[str, int, bool]:
        """Host, port and TLS that devices are told to connect to."""
        host, port = self.require_mqtt()
        tls = self.mqtt_tls if self.mqtt_public_tls is None else self.mqtt_public_tls
        return self.mqtt_public_host or host, self.mqtt_public_port or port, tls

    def operator_webhook(self) -> str | None:
        """The operator's webhook URL, or None when none is set (or it is empty, as a
        deployment's unset variable arrives); an URL that is not http(s) with a host is
        refused, naming the variable (never printing the URL: it is a key)."""
        if self.operator_webhook_url is None:
            return None
        url = self.operator_webhook_url.get_secret_value().strip()
        if not url:
            return None
        try:
            return webhook_url(url)
        except ConfigurationError as exc:
            raise ConfigurationError(f"EHEALTHLAB_OPERATOR_WEBHOOK_URL: {exc}") from None

    def require_patient_key(self) -> bytes:
        if self.patient_key is None:
            raise ConfigurationError(
                "no patient key: set EHEALTHLAB_PATIENT_KEY (a long random secret)"
            )
        return self.patient_key.get_secret_value().encode()
