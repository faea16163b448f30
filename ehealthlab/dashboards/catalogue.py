"""The dashboards the platform ships, each once: its file name, the kind of organisation that
sees it (which data source, which views), and the function that builds it. The build, the
tests and the benchmark all read this list. A dashboard is built for the alert rules ingest
runs: the provider's draws their thresholds."""

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
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules


@dataclass(frozen=True)
class Entry:
    name: str
    kind: Kind
    builder: Callable[[AlertRules], Dashboard]

    def build(self, rules: AlertRules = DEFAULT_RULES) -> Dashboard:
        return self.builder(rules)

    def json_data(self, rules: AlertRules = DEFAULT_RULES) -> dict[str, Any]:
        return to_json_data(self.build(rules))


DASHBOARDS: tuple[Entry, ...] = (
    Entry("provider", "provider", provider_dashboard),
    Entry("startup", "startup", lambda _rules: startup_dashboard()),
    Entry("operations", "lab", lambda _rules: operations_dashboard()),
    Entry("pilot", "lab", lambda _rules: pilot_dashboard()),
)


def names_by_kind() -> dict[Kind, list[str]]:
    found: dict[Kind, list[str]] = {}
    for entry in DASHBOARDS:
        found.setdefault(entry.kind, []).append(entry.name)
    return found
