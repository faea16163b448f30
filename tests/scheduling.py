"""The order the suite's modules run in, as a pytest plugin (`pytest_plugins = ["scheduling"]`).

scripts/test.sh shares the suite out across pytest-xdist's workers a module at a time
(`--dist loadfile`: a module's database and application are built once, by one worker) in
collection order (`--no-loadscope-reorder`). Modules marked `long` come first, so that no
worker starts a two-minute test when the others have nothing left to do; then the modules
that read the session's simulated pilot, next to each other. Without xdist this only
reorders modules.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "long: a module with a test of about a minute or more; started first by the workers",
    )


def _rank(module_items: list[pytest.Item]) -> int:
    if any(item.get_closest_marker("long") is not None for item in module_items):
        return 0
    if any("simulated_pilot" in getattr(item, "fixturenames", ()) for item in module_items):
        return 1
    return 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    by_module: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ranked = sorted(by_module.values(), key=_rank)  # stable: collection order within a rank
    items[:] = [item for module_items in ranked for item in module_items]
