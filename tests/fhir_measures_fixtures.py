"""What the tests of the pilot's indicators as FHIR share: evaluations as the evaluation core
stores them (migration 0017), built by `document` from `figures` and inserted by `store`; a
MeasureReport's scores by indicator (`scores`); and, through /fhir, a `pilot` (the operator, a
start-up, a provider and a mini-pilot, with evaluations of January and February stored) and a
client of what it may read (`get`, `ok`, `reports`).

The `pilot` fixture is imported by the test modules that use it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import psycopg
import pytest
from fhir.resources.R4B.bundle import Bundle
from gateway_fixtures import bearer

from ehealthlab.evaluation.registry import INDICATORS
from ehealthlab.gateway import admin

FHIR_JSON = "application/fhir+json"
JAN = (date(2026, 1, 1), date(2026, 2, 1))
FEB = (date(2026, 2, 1), date(2026, 3, 1))

# -- fixtures: evaluation documents as `ehealthlab evaluate` writes them ------------------------


def figures(**values: Any) -> dict[str, Any]:
    """Every indicator of the registry, null unless given."""
    return {indicator.id: values.get(indicator.id) for indicator in INDICATORS}


def document(
    period: tuple[date, date],
    by: str,
    groups: dict[str, dict[str, Any]],
    everyone: dict[str, Any],
    *,
    population: str = "real",
    computed_at: datetime,
    labels: dict[str, str] | None = None,
    min_group_patients: int = 5,
) -> dict[str, Any]:
    return {
        "period": {"from": period[0].isoformat(), "to": period[1].isoformat()},
        "by": by,
        "population": population,
        "computed_at": computed_at.isoformat(),
        "min_group_patients": min_group_patients,
        "seed": 1,
        "labels": labels or {},
        "groups": groups,
        "all": everyone,
    }


def store(settings, doc: dict[str, Any]) -> None:
    with psycopg.connect(settings.require_database_url()) as conn:
        conn.execute(
            "INSERT INTO evaluations (population, grouping, period_from, period_to, computed_at,"
            " document) VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            (
                doc["population"],
                doc["by"],
                doc["period"]["from"],
                doc["period"]["to"],
                doc["computed_at"],
                orjson.dumps(doc).decode(),
            ),
        )


def at(day: int, hour: int = 3) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


# -- a MeasureReport read back --------------------------------------------------------------------


def scores(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["code"]["coding"][0]["code"]: g.get("measureScore") for g in report["group"]}


# -- through /fhir --------------------------------------------------------------------------------


class Pilot:
    """Tokens, ids and the evaluations stored."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}


@pytest.fixture(scope="module")
def pilot(client, settings) -> Pilot:
    """Evaluations of January (real: by municipality twice, the later current; by SNAI class
    later still, so the real `all` is its; by start-up and by mini-pilot; simulated: by
    area) and of February (real, by device type)."""
    found = Pilot()
    boot = admin.bootstrap_operator(settings)
    found.tokens["operator"] = boot["token"]
    for who, kind in (("a", "startup"), ("p", "provider")):
        answer = client.post(
            "/api/v1/organisations",
            json={"kind": kind, "name": f"{kind} {who} {uuid.uuid4().hex[:6]}"},
            headers=bearer(boot["token"]),
        )
        assert answer.status_code == 201, answer.text
        found.tokens[who], found.ids[who] = answer.json()["token"], answer.json()["id"]
    made = client.post(
        "/api/v1/mini-pilots",
        json={"name": f"valli {uuid.uuid4().hex[:6]}", "startups": [found.ids["a"]],
              "municipalities": ["001003"], "start": "2026-01-01", "end": "2026-06-30"},
        headers=bearer(boot["token"]),
    )  # fmt: skip
    assert made.status_code == 201, made.text
    found.ids["mini_pilot"] = made.json()["id"]
    stale = figures(patients_enrolled=6, adherence={"value": 0.1, "ci95": [0.0, 0.2]})
    store(
        settings,
        document(
            JAN, "municipality", {"001003": stale}, figures(patients_enrolled=99), computed_at=at(1)
        ),
    )
    current = {
        "001003": figures(
            patients_enrolled=7, adherence={"value": 0.82, "ci95": [0.7, 0.9]}, loss_rate=0.02
        ),
        "001272": figures(
            patients_enrolled=4, adherence={"value": 0.9, "ci95": [0.8, 1.0]}, loss_rate=0.5
        ),
    }
    labels = {"001003": "Ala di Stura", "001272": "Torino"}
    store(
        settings,
        document(
            JAN,
            "municipality",
            current,
            figures(patients_enrolled=11),
            computed_at=at(2),
            labels=labels,
        ),
    )
    snai = {"D": figures(patients_enrolled=7), "A": figures(patients_enrolled=4)}
    store(
        settings,
        document(
            JAN, "snai_class", snai, figures(patients_enrolled=11, alerts=12), computed_at=at(3)
        ),
    )
    store(
        settings,
        document(
            JAN,
            "startup",
            {found.ids["a"]: figures(patients_enrolled=11)},
            figures(patients_enrolled=11),
            computed_at=at(1),
        ),
    )
    store(
        settings,
        document(
            JAN,
            "mini_pilot",
            {found.ids["mini_pilot"]: figures(patients_enrolled=7)},
            figures(patients_enrolled=11),
            computed_at=at(1),
        ),
    )
    store(
        settings,
        document(
            JAN,
            "area",
            {"inner": figures(patients_enrolled=30)},
            figures(patients_enrolled=30),
            population="simulated",
            computed_at=at(1),
        ),
    )
    store(
        settings,
        document(
            FEB,
            "device_type",
            {"blood_pressure_monitor": figures(patients_enrolled=8)},
            figures(patients_enrolled=8),
            computed_at=at(4),
        ),
    )
    return found


def get(client, token: str | None, path: str, params=None):
    headers = bearer(token) if token else {}
    return client.get(f"/fhir{path}", params=params, headers=headers)


def ok(client, token: str, path: str, params=None) -> dict[str, Any]:
    answer = get(client, token, path, params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == FHIR_JSON
    return answer.json()


def reports(client, token: str, params=None) -> list[dict[str, Any]]:
    """Every report of a search, walking its pages."""
    bundle = ok(client, token, "/MeasureReport", params)
    Bundle.model_validate(bundle)
    found = [e["resource"] for e in bundle.get("entry", [])]
    while (link := {l["relation"]: l["url"] for l in bundle["link"]}.get("next")) is not None:  # noqa: E741
        bundle = ok(client, token, "/MeasureReport", parse_qsl(urlsplit(link).query))
        found += [e["resource"] for e in bundle.get("entry", [])]
    return found
