"""bench/fhir_api.py's measurements on one store: the patients and token they need, the
runs (latency, throughput, baselines, ladder), and the audit rows written meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx2
import psycopg
from fhir_api_load import Result, wrk
from fhir_api_store import Store
from fhir_api_worker import Worker

from ehealthlab.gateway import token_registry

# -- a run -----------------------------------------------------------------------------------------


@dataclass
class Scene:
    """What the requests need: a provider's token, patients to ask about, second pages."""

    token: str
    patients: list[str]
    second_pages: list[str]
    #: first pages asked for while choosing the patients
    asked: int


def prepare(store: Store, worker: Worker, patients: int = 200) -> Scene:
    """A token of the first provider and `patients` of its patients with two pages or more."""
    with psycopg.connect(store.url, autocommit=True) as conn:
        provider = conn.execute(
            "SELECT id FROM organisations WHERE kind = 'provider' ORDER BY name LIMIT 1"
        ).fetchone()
        assert provider is not None
        _, token = token_registry.create_token(conn, provider[0], "member", "fhir api bench")
        candidates = [
            str(row[0])
            for row in conn.execute(
                "SELECT id FROM patients WHERE organisation_id = %s ORDER BY id LIMIT %s",
                (provider[0], patients + patients // 4),
            )
        ]
    chosen, second_pages, asked = [], [], 0
    with httpx2.Client(base_url=worker.url, timeout=60) as http:
        for patient in candidates:
            asked += 1
            answer = http.get(
                "/fhir/Observation",
                params={"patient": patient, "_count": "20"},
                headers={"Authorization": f"Bearer {token}"},
            )
            answer.raise_for_status()
            links = {link["relation"]: link["url"] for link in answer.json()["link"]}
            if "next" not in links:
                continue  # enrolled late: nothing of theirs yet in a short store
            parts = urlsplit(links["next"])
            second_pages.append(f"{parts.path}?{parts.query}")
            chosen.append(patient)
            if len(chosen) == patients:
                break
    return Scene(token, chosen, second_pages, asked)


def _searches(patients: Sequence[str], prefix: str = "/fhir", **extra: str) -> list[str]:
    return [f"{prefix}/Observation?{urlencode({'patient': p, **extra})}" for p in patients]


#: connections for throughput: enough to keep one worker busy, few enough to stay bounded
THROUGHPUT_CONNECTIONS = 16


def _audit_rows(store: Store) -> int:
    with psycopg.connect(store.url) as conn:
        row = conn.execute("SELECT count(*) FROM fhir_audit_events").fetchone()
    return int(row[0]) if row else 0


@dataclass
class Audited:
    """Requests answered that read patient data, and the audit rows written meanwhile."""

    requests: int = 0
    in_flight: int = 0  # requests wrk may have left unanswered at the end of its runs
    rows: int = 0


def measure(
    store: Store, worker: Worker, seconds: float, profile: Path | None
) -> tuple[list[Result], Audited]:
    rows_before = _audit_rows(store)
    scene = prepare(store, worker)
    warm_up = max(3.0, seconds / 5)
    audited = Audited()

    def run(label: str, paths: list[str], connections: int, length: float = seconds) -> Result:
        warm = wrk(
            worker, paths, scene.token, connections=connections, seconds=warm_up, label="warm-up"
        )
        result = wrk(
            worker,
            paths,
            scene.token,
            connections=connections,
            seconds=length,
            label=label,
            profile=profile if connections > 1 else None,
        )
        print(
            f"  {label}: {result.rate:,.0f} req/s, p50 {result.p50_ms:.1f} ms,"
            f" p95 {result.p95_ms:.1f} ms, worker {result.worker_cpu:.0f} %",
            flush=True,
        )
        if paths[0].startswith(("/fhir/", "/bench/r4b/")):  # patient data: audited
            audited.requests += warm.requests + result.requests
            audited.in_flight += 2 * connections
        return result

    last = {"_count": "1000", "_sort": "-date"}
    twenty = {"_count": "20"}
    lastn = [f"/fhir/Observation/$lastn?{urlencode({'patient': p})}" for p in scene.patients]
    many = THROUGHPUT_CONNECTIONS
    short = max(5.0, seconds / 2)  # the models are slow: fewer requests suffice
    results = [
        run("last 1,000 Observations", _searches(scene.patients, **last), 1),
        run(
            "baseline: last 1,000, R4B models",
            _searches(scene.patients, "/bench/r4b", **last),
            1,
            short,
        ),
        run("$lastn (max=1)", lastn, 1),
        run("search, first page (20)", _searches(scene.patients, **twenty), many),
        run(
            "search, first page, _total=none",
            _searches(scene.patients, **twenty, _total="none"),
            many,
        ),
        run("search, second page (20)", scene.second_pages, many),
        run(
            "baseline: first page, R4B models",
            _searches(scene.patients, "/bench/r4b", **twenty),
            many,
            short,
        ),
        run("ladder: fixed Bundle bytes (ceiling)", ["/bench/bytes"], many),
        run("ladder: + token check", ["/bench/token"], many),
        run("ladder: + one SELECT 1", ["/bench/select"], many),
        run("baseline: FastAPI default JSON", ["/bench/default"], many),
        run("baseline: FastAPI typed return", ["/bench/typed"], many),
    ]
    audited.requests += scene.asked
    audited.rows = _audit_rows(store) - rows_before
    return results, audited
