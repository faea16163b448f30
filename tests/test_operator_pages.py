"""What the operator is told (gateway/operator_pages.py) and when a failed page is tried
again: pure, table-driven and by property."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from ehealthlab.errors import ConfigurationError
from ehealthlab.gateway.operator_pages import (
    Page,
    QueuedPage,
    broker_drops_page,
    merge_pages,
    retry_delay_s,
    webhook_body,
    webhook_url,
)
from ehealthlab.settings import Settings

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def test_the_broker_drops_page_says_what_was_lost_and_where_to_look() -> None:
    page = broker_drops_page(5002, 12004)
    assert page.event == "broker_drops"
    assert page.summary.startswith("The MQTT broker dropped 5,002 message(s) (12,004 since it")
    assert "acknowledged to their devices and are lost" in page.summary
    assert page.details == {
        "dropped": 5002,
        "dropped_since_broker_start": 12004,
        "runbook": "docs/reliability-faults.md, section 3",
    }


def test_one_page_is_one_line_of_text_and_several_a_list() -> None:
    one = orjson.loads(webhook_body([QueuedPage(1, T0, Page("broker_drops", "A", {"n": 1}))]))
    assert one == {
        "source": "ehealthlab",
        "text": "[ehealthlab] A (raised 2026-12-07T09:00:00+00:00)",
        "pages": [{"id": 1, "raised_at": "2026-12-07T09:00:00+00:00", "event": "broker_drops",
                   "summary": "A", "details": {"n": 1}}],
    }  # fmt: skip
    two = orjson.loads(
        webhook_body([QueuedPage(1, T0, Page("e", "A")), QueuedPage(2, T0, Page("e", "B"))])
    )
    assert two["text"] == (
        "[ehealthlab] 2 pages:\n- A (raised 2026-12-07T09:00:00+00:00)"
        "\n- B (raised 2026-12-07T09:00:00+00:00)"
    )
    assert [p["id"] for p in two["pages"]] == [1, 2]


def test_there_is_no_empty_post() -> None:
    with pytest.raises(ValueError, match="no pages"):
        webhook_body([])


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 0.0), (1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (7, 300.0), (10**6, 300.0)],
)
def test_retry_delay(attempts: int, expected: float) -> None:
    assert retry_delay_s(attempts, 5.0, 300.0) == expected


@given(
    st.integers(min_value=1, max_value=10**9),
    st.floats(min_value=0.01, max_value=600),
    st.floats(min_value=0.01, max_value=86_400),
)
def test_the_delay_grows_and_never_passes_the_cap(attempts: int, base: float, cap: float) -> None:
    delay = retry_delay_s(attempts, base, cap)
    assert 0 < delay <= cap
    assert retry_delay_s(attempts + 1, base, cap) >= delay


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),  # a deployment's variable left empty
        ("  ", None),
        ("https://chat.example.org/hooks/abc123", "https://chat.example.org/hooks/abc123"),
        (" http://127.0.0.1:9000/page ", "http://127.0.0.1:9000/page"),
        ("ftp://chat.example.org/x", ConfigurationError),
        ("https:///no-host", ConfigurationError),
        ("chat.example.org/hooks/abc123", ConfigurationError),
        ("file:///etc/passwd", ConfigurationError),
    ],
)
def test_the_webhook_setting(given: str | None, expected: str | type | None) -> None:
    settings = Settings(operator_webhook_url=None if given is None else SecretStr(given))
    if isinstance(expected, type):
        with pytest.raises(expected, match="EHEALTHLAB_OPERATOR_WEBHOOK_URL") as error:
            settings.operator_webhook()
        assert given not in str(error.value)
    else:
        assert settings.operator_webhook() == expected


def test_drops_waiting_to_be_paged_add_up_and_the_count_is_the_newest() -> None:
    merged = merge_pages(broker_drops_page(7, 7), broker_drops_page(5, 12))
    assert merged == broker_drops_page(12, 12)
    # the broker started again in between: its count is the new one's
    assert merge_pages(broker_drops_page(7, 40), broker_drops_page(3, 3)) == broker_drops_page(
        10, 3
    )


@pytest.mark.parametrize(
    ("pending", "new"),
    [
        (Page("ingest_down", "a"), Page("ingest_down", "b")),  # not known how to add up
        (broker_drops_page(1, 1), Page("ingest_down", "b")),  # another event
        (Page("ingest_down", "b"), broker_drops_page(1, 1)),
    ],
)
def test_pages_that_cannot_be_told_as_one_are_not_merged(pending: Page, new: Page) -> None:
    assert merge_pages(pending, new) is None


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://chat.example.org/hooks/abc", None),
        ("http://127.0.0.1:9000/page?token=x", None),
        ("ftp://chat.example.org/x", "http:// or https://"),
        ("https:///no-host", "http:// or https://"),
        ("https://zz-user:zz-pw@chat.example.org/x", "user or password"),
        ("https://chat.example.org/ho oks/abc", "a blank, a control or a non-ASCII"),
        ("https://chat.example.org/hooks/\x00abc", "a blank, a control or a non-ASCII"),
        ("https://chat.example.org/hooks/\u00e9abc", "a blank, a control or a non-ASCII"),
        ("https://chat.example.org:99999/hooks/abc", "invalid host or port"),
        ("https://chat.example.org:port/hooks/abc", "invalid host or port"),
        ("https://chat.example.org:0/hooks/abc", "invalid host or port"),
        ("https://[abc/hooks/x", "invalid host or port"),
    ],
)
def test_a_webhook_url_the_pager_can_post_to(url: str, refused: str | None) -> None:
    if refused is None:
        assert webhook_url(url) == url
        return
    with pytest.raises(ConfigurationError, match=refused) as error:
        webhook_url(url)
    assert "abc" not in str(error.value) and "zz-" not in str(error.value)
