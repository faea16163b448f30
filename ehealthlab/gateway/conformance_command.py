"""`ehealthlab conformance DEVICE_ID --minutes N`: watch a device, then read its report.

Acts through the HTTP API (EHEALTHLAB_API_URL and EHEALTHLAB_TOKEN, or --api-url and
--token), as a start-up engineer would from their own machine: it notes the time, waits N
minutes while the device does its thing (or, with --past, looks at the last N minutes at
once), then asks the API to judge that window. Exit status 0 when conformant, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

from ehealthlab.api.client import GatewayClient
from ehealthlab.errors import (
    ConfigurationError,
    NotFoundError,
)
from ehealthlab.settings import Settings

_MARKS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "not_observed": " -- "}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "conformance",
        help="check a device against the device contract",
        description="Watch what DEVICE_ID sends for N minutes (or, with --past, look at the "
        "last N minutes), then print, point by point, what is right and what is wrong.",
    )
    parser.add_argument("device_id", metavar="DEVICE_ID")
    parser.add_argument(
        "--minutes", type=float, default=5.0, metavar="N", help="how long to watch (default 5)"
    )
    parser.add_argument(
        "--past", action="store_true", help="judge the last N minutes now instead of watching"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--api-url", default=None, help="default: EHEALTHLAB_API_URL")
    parser.add_argument("--token", default=None, help="default: EHEALTHLAB_TOKEN")
    parser.set_defaults(handler=run_conformance)


def run_conformance(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 < args.minutes <= 7 * 24 * 60:
        raise ConfigurationError("--minutes must be more than 0 and at most a week")
    api_url = args.api_url or settings.api_url or f"http://{settings.api_host}:{settings.api_port}"
    token = args.token or (settings.token.get_secret_value() if settings.token else None)
    if not token:
        raise ConfigurationError("no API token: set EHEALTHLAB_TOKEN or pass --token")
    if args.past:
        until = datetime.now(UTC)
        since = until - timedelta(minutes=args.minutes)
    else:
        since = datetime.now(UTC)
        _get(api_url, token, args.device_id, since, since + timedelta(seconds=1))  # fail fast
        _watch(args.minutes, args.device_id)
        until = datetime.now(UTC)
    report = _get(api_url, token, args.device_id, since, until)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["verdict"] == "conformant" else 1


def _watch(minutes: float, device_id: str) -> None:
    end = time.monotonic() + minutes * 60
    print(
        f"watching {device_id} for {minutes:g} minutes: let it connect, measure, go "
        "offline and come back…",
        file=sys.stderr,
    )
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(30.0, left))
        if end - time.monotonic() > 1:
            print(f"  {(end - time.monotonic()) / 60:.1f} minutes left", file=sys.stderr)


def _get(api_url: str, token: str, device_id: str, since: datetime, until: datetime) -> Any:
    query = urllib.parse.urlencode({"from": since.isoformat(), "to": until.isoformat()})
    path = f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}/conformance?{query}"
    try:
        return GatewayClient(api_url, token).get(path)
    except NotFoundError:
        raise NotFoundError(f"no device {device_id!r} that this token may see") from None


def render(report: dict[str, Any]) -> str:
    """The report for people: one line a check, what was wrong under it, then what to do."""
    verdict = report["verdict"].replace("_", " ").upper()
    lines = [
        f"Conformance of {report['device_id']}, {report['window_from']} to "
        f"{report['window_to']}: {verdict}",
        "",
    ]
    for check in report["checks"]:
        lines.append(f"  {_MARKS[check['verdict']]}  {check['title']}: {check['summary']}")
        lines.extend(f"        {detail}" for detail in check["details"])
        if check["advice"] and check["verdict"] in ("fail", "warn", "not_observed"):
            lines.append(f"        -> {check['advice']}")
    return "\n".join(lines)
