"""One error tree for the whole platform.

Code raises these; the boundaries translate them once: the command line prints a one-line
message and an exit status, the HTTP API renders problem details, the FHIR API an
OperationOutcome, and ingest a feedback message to the device. Foreign exceptions (psycopg,
paho, OSError) are wrapped where they enter, never leaked through the core.
"""

from __future__ import annotations

from collections.abc import Sequence


class EhealthlabError(Exception):
    """Root of every error the platform raises on purpose."""

    #: exit status the command line uses for this kind of error
    exit_status: int = 1


class ConfigurationError(EhealthlabError):
    """A setting is missing or wrong; the message names the EHEALTHLAB_ variable."""

    exit_status = 2


class MissingDependencyError(EhealthlabError):
    """A program the platform needs is not installed; the message says how to install it."""


class ServiceUnavailableError(EhealthlabError):
    """A server (PostgreSQL, Mosquitto, the API) cannot be reached; the message names it."""


class StackError(EhealthlabError):
    """The local stack could not be started, stopped or inspected."""


class StoreError(EhealthlabError):
    """The time-series store refused an operation."""


class MigrationError(StoreError):
    """A schema migration could not be applied."""


class InvalidInputError(EhealthlabError):
    """Input from a user or a device is not acceptable; the message says why."""

    exit_status = 2


class NotFoundError(EhealthlabError):
    """The thing does not exist, or the caller may not know that it does."""


class PermissionDeniedError(EhealthlabError):
    """The caller is known but may not do this."""


class AuthenticationError(EhealthlabError):
    """The caller could not be identified (missing or invalid credentials)."""


class TooManyAttemptsError(AuthenticationError):
    """Too many failed credential checks from one client: it may try again after
    `retry_after` seconds (HTTP 429 with Retry-After; a boundary that does not know it
    answers it as the failed check it also is)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConflictError(InvalidInputError):
    """The request clashes with what exists: a duplicate, an overlap, a revoked device.

    `extensions` are safe to show the caller (e.g. the id of the existing record it owns).
    """

    def __init__(self, message: str, **extensions: object) -> None:
        super().__init__(message)
        self.extensions = extensions


class InvalidFieldError(InvalidInputError):
    """One field of a request body is well formed but not acceptable (an unknown
    municipality, a metric the device does not measure); `field` names it.

    `also` names further unacceptable fields, so that a caller learns of every one at once
    (each of several unknown references); `errors` holds them all, the first first.
    """

    def __init__(self, field: str, message: str, *, also: Sequence[tuple[str, str]] = ()) -> None:
        self.errors: tuple[tuple[str, str], ...] = ((field, message), *also)
        super().__init__("; ".join(f"{f}: {m}" for f, m in self.errors) if also else message)
        self.field = field
