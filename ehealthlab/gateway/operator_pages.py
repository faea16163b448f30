"""Pages for the operator: what a person must hear about, and how the webhook receives it.

A log line is read after the fact; a page reaches someone now. The platform pages for the
losses nothing else reports: today the broker's drops (broker_watch.py), messages it
acknowledged to devices and then threw away. Pages are kept in `operator_pages` and sent by
the pager (pager.py) to one webhook, the operator's: a JSON body whose `text` is what
Slack, Mattermost or Rocket.Chat incoming webhooks show as it is, and whose `pages` carry
the figures for a receiver that routes on them (an Alertmanager bridge, a ticketing hook).

Pure: figures in, page and body out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

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


def retry_delay_s(attempts: int, base_s: float, cap_s: float) -> float:
    """How long to wait before trying a page again after `attempts` failed tries: doubling
    from `base_s`, never more than `cap_s`, so a webhook that is down for an hour is not
    hammered and one back after a blip is reached soon."""
    if attempts < 1:
        return 0.0
    return float(min(cap_s, base_s * 2.0 ** min(attempts - 1, 62)))


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
