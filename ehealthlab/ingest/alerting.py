"""Raising alerts for readings that just found their patient: the one glue between the pure
rules (`ingest/alerts.py`) and the store (`store/alerts.py`), used by the ingest worker for
new readings and by the gateway when an enrolment attributes earlier ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from types import MappingProxyType
from uuid import UUID

from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertCandidate, AlertRules, alert_candidates
from ehealthlab.store.alerts import (
    AlertRow,
    lock_patients,
    raise_alerts,
    weight_history,
    weight_window,
)
from ehealthlab.store.db import Connection
from ehealthlab.store.readings import AlertScope, AttributedRow


def raise_alerts_for(
    conn: Connection, attributed: Sequence[AttributedRow], rules: AlertRules = DEFAULT_RULES
) -> int:
    """Evaluate the rules on readings just attributed to patients; returns alerts raised."""
    if not attributed:
        return 0
    weights = [r for r in attributed if r.metric == rules.weight_gain.metric]
    history: dict[UUID, list[AttributedRow]] = {}
    if weights:
        patients = sorted({r.patient_id for r in weights})
        # two transactions storing weights of one patient at once (two workers, two devices,
        # MQTT and FHIR) would each read the history without the other's uncommitted weight
        # and both miss a gain: the second waits here, then reads what the first committed
        lock_patients(conn, patients)
        since, until = weight_window([r.measured_at for r in weights], rules.weight_gain.window)
        history = weight_history(conn, patients, since, until)
    candidates = alert_candidates(attributed, history, rules)
    return raise_alerts(conn, [alert_row(c) for c in candidates])


def alert_row(candidate: AlertCandidate) -> AlertRow:
    reading = candidate.reading
    return AlertRow(
        patient_id=candidate.patient_id,
        rule=candidate.rule_id,
        day=candidate.day,
        device_id=reading.device_id,
        metric=reading.metric,
        at=reading.at,
        value=reading.value,
        measured_at=reading.measured_at,
        raised_at=candidate.raised_at,
    )


@lru_cache(maxsize=16)
def alert_scope(rules: AlertRules) -> AlertScope:
    """The readings `rules` may act on, for the store to send back from a batch: a threshold
    rule's metric at or past its threshold (the lowest of a metric's `>=` rules, the highest
    of its `<=` rules), and every weight (the weight-gain rule compares weights with each
    other, whatever their values)."""
    at_least: dict[str, float] = {}
    at_most: dict[str, float] = {}
    for rule in rules.thresholds:
        if math.isnan(rule.threshold):  # breached by nothing; as a bound it would hide others
            continue
        if rule.op == ">=":
            at_least[rule.metric] = min(rule.threshold, at_least.get(rule.metric, rule.threshold))
        else:
            at_most[rule.metric] = max(rule.threshold, at_most.get(rule.metric, rule.threshold))
    return AlertScope(
        MappingProxyType(at_least), MappingProxyType(at_most), frozenset({rules.weight_gain.metric})
    )
