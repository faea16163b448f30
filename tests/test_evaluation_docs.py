"""docs/indicators.md is generated from the registry: it must be current, and complete."""

from __future__ import annotations

from ehealthlab.evaluation import docs
from ehealthlab.evaluation.registry import INDICATORS


def test_the_indicators_page_is_generated_from_the_registry_and_current():
    assert docs.PAGE.read_text(encoding="utf-8") == docs.render(), (
        "docs/indicators.md is stale: run `python -m ehealthlab.evaluation.docs`"
    )


def test_the_page_defines_every_indicator_once():
    page = docs.render()
    for indicator in INDICATORS:
        assert page.count(f"| `{indicator.id}` |") == 1, indicator.id
