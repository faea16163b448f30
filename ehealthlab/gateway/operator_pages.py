"""Pages for the operator: what a person must hear about, and how the webhook receives it.

A log line is read after the fact; a page reaches someone now. The platform pages for the
losses nothing else reports: today the broker's drops (broker_watch.py), messages it
acknowledged to devices and then threw away. Pages are kept in `operator_pages` and sent by
the pager (pager.py) to one webhook, the operator's: a JSON body whose `text` is what
Slack, Mattermost or Rocket.Chat incoming webhooks show as it is, and whose `pages` carry
the figures for a receiver that routes on them (an Alertmanager bridge, a ticketing hook).

Pure: figures in, page and body out; and whether a URL is one the pager can post to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from ehealthlab.errors import ConfigurationError

#: where a page tells the operator to look (a path in the platform's documentation)
BROKER_DROPS_RUNBOOK = "docs/reliability-faults.md, section 3"


@dataclass(frozen=True)
class Page:
    """What to tell the operator: an event name a receiver can route on, one line a person
    reads on a phone, and the figures behind it."""

    event: str
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueuedPage:
    """A page as the store keeps it until it is sent."""

    id: int
    raised_at: datetime
    page: Page


def broker_drops_page(dropped: int, dropped_since_start: int) -> Page:
    """The page for messages the broker dropped past a session's queue limit."""
    return Page(
        event="broker_drops",
        summary=(
            f"The MQTT broker dropped {dropped:,} message(s) ({dropped_since_start:,} since it"
            " started): a session's queue is full, and those readings were acknowledged to"
            " their devices and are lost. Is ingest running and keeping up?"
        ),
        details={
            "dropped": dropped,
            "dropped_since_broker_start": dropped_since_start,
            "runbook": BROKER_DROPS_RUNBOOK,
        },
    )


def merge_pages(pending: Page, new: Page) -> Page | None:
    """One page saying what both say, for a page raised while another of its event waits to
    be sent; None when the two cannot be told as one (another event, or one this module does
    not know how to add up)."""
    if pending.event != new.event or new.event != "broker_drops":
        return None
    return broker_drops_page(
        int(pending.details["dropped"]) + int(new.details["dropped"]),
        int(new.details["dropped_since_broker_start"]),
    )


def webhook_body(pages: Sequence[QueuedPage], *, source: str = "ehealthlab") -> bytes:
    """One POST for the pages due together, oldest first: `text` for a chat's incoming
    webhook (one line for one page, a list for several), `pages` for a program."""
    if not pages:
        raise ValueError("no pages to send")
    lines = [f"{p.page.summary} (raised {_when(p.raised_at)})" for p in pages]
    if len(lines) == 1:
        text = f"[{source}] {lines[0]}"
    else:
        text = f"[{source}] {len(lines)} pages:\n" + "\n".join(f"- {line}" for line in lines)
    return orjson.dumps(
        {
            "source": source,
            "text": text,
            "pages": [
                {
                    "id": p.id,
                    "raised_at": p.raised_at,
                    "event": p.page.event,
                    "summary": p.page.summary,
                    "details": dict(p.page.details),
                }
                for p in pages
            ],
        }
    )


def webhook_url(url: str) -> str:
    """`url` when the pager can POST to it, else ConfigurationError saying why, without the
    URL: http or https, a host, a valid port, no user or password (http.client would not
    send them), only printable ASCII (percent-encode the rest)."""
    if any(not 0x20 < ord(c) < 0x7F for c in url):
        raise ConfigurationError(
            "the operator's webhook URL has a blank, a control or a non-ASCII character"
            " (percent-encode it)"
        )
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port  # both checked when read
    except ValueError:
        raise ConfigurationError("the operator's webhook URL has an invalid host or port") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError("the operator's webhook must be an http:// or https:// URL")
    if port == 0:
        raise ConfigurationError("the operator's webhook URL has an invalid host or port")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "the operator's webhook URL has a user or password: put the key in its path or "
            "query, as incoming webhooks do"
        )
    return url


def retry_delay_s(attempts: int, base_s: float, cap_s: float) -> float:
    """How long to wait before trying a page again after `attempts` failed tries: doubling
    from `base_s`, never more than `cap_s`, so a webhook that is down for an hour is not
    hammered and one back after a blip is reached soon."""
    if attempts < 1:
        return 0.0
    return float(min(cap_s, base_s * 2.0 ** min(attempts - 1, 62)))


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
