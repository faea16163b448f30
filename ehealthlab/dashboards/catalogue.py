"""The dashboards the platform ships, each once: its file name, the kind of organisation that
sees it (which data source, which views), and the function that builds it. The build, the
tests and the benchmark all read this list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grafanalib.core import Dashboard

from ehealthlab.dashboards.operations import operations_dashboard
from ehealthlab.dashboards.panels import to_json_data
from ehealthlab.dashboards.pilot import pilot_dashboard
from ehealthlab.dashboards.provider import provider_dashboard
from ehealthlab.dashboards.roles import Kind
from ehealthlab.dashboards.startup import startup_dashboard


@dataclass(frozen=True)
class Entry:
    name: str
    kind: Kind
    build: Callable[[], Dashboard]

    def json_data(self) -> dict[str, Any]:
        return to_json_data(self.build())


DASHBOARDS: tuple[Entry, ...] = (
    Entry("provider", "provider", provider_dashboard),
    Entry("startup", "startup", startup_dashboard),
    Entry("operations", "lab", operations_dashboard),
    Entry("pilot", "lab", pilot_dashboard),
)


def names_by_kind() -> dict[Kind, list[str]]:
    found: dict[Kind, list[str]] = {}
    for entry in DASHBOARDS:
        found.setdefault(entry.kind, []).append(entry.name)
    return found
