"""A client of the platform's own HTTP API (`/api/v1`, `/fhir`): JSON in, JSON out.

The commands that act through the API (`simulate`, `conformance`, `demo`) use it as any
client would, with the tokens the API hands out. Answers that are not 2xx become the
platform's own errors, with the problem detail the API gave.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ehealthlab.errors import (
    AuthenticationError,
    ConflictError,
    EhealthlabError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

_BY_STATUS: dict[int, type[EhealthlabError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
    503: ServiceUnavailableError,
}


class GatewayClient:
    """Calls to one API with one default bearer token (each call may use another)."""

    def __init__(self, api_url: str, token: str, timeout_s: float = 30.0) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"the API URL must be http(s)://…, not {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def get(self, path: str, *, token: str | None = None) -> Any:
        return self._call("GET", path, None, token)

    def post(self, path: str, body: Any, *, token: str | None = None) -> Any:
        return self._call("POST", path, body, token)

    def _call(self, method: str, path: str, body: Any, token: str | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token or self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 - the operator's own API URL
            self.api_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                payload = response.read()
        except urllib.error.HTTPError as exc:
            error = _BY_STATUS.get(exc.code, EhealthlabError)
            if exc.code == 401:
                raise error(f"the API refused the token: {_detail(exc)}") from None
            where = path.split("?", 1)[0]
            raise error(f"{method} {where}: the API answered {exc.code}: {_detail(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailableError(
                f"cannot reach the API at {self.api_url} ({reason}); start it with "
                "`ehealthlab api` or set EHEALTHLAB_API_URL"
            ) from None
        return json.loads(payload) if payload else None


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
    except ValueError:
        return str(error.reason)
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or error.reason)
    return str(error.reason)
