"""What bench/fhir_api.py's API worker serves besides the application: the baselines'
and the ladder's routes (`/bench/...`); and the handle on a started worker."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fhir_api_pilot import START

from ehealthlab.api.auth import AsyncContextDep, CachedPrincipalDep
from ehealthlab.fhir.mapping import fast, r4b
from ehealthlab.fhir.mapping.rows import ReadingRecord
from ehealthlab.fhir.outcome import FhirResponse
from ehealthlab.fhir.rest.interactions import search_response
from ehealthlab.fhir.rest.runtime import resources_of

REPOSITORY = Path(__file__).resolve().parent.parent


# -- the API worker ------------------------------------------------------------------------------


def sample_bundle() -> dict[str, Any]:
    """A 20-entry searchset Bundle of a cuff's panels and pulses, as the API builds it."""
    patient, provider = uuid.UUID(int=1), uuid.UUID(int=2)
    readings = []
    for i in range(10):
        at = START + timedelta(hours=6 * i)
        for metric, value in (("bp_systolic", 128.0), ("bp_diastolic", 81.0), ("heart_rate", 70)):
            readings.append(
                ReadingRecord(
                    "bpm-0000000000000001",
                    "blood_pressure_monitor",
                    metric,
                    at,
                    float(value),
                    at,
                    at + timedelta(seconds=9),
                    False,
                    patient,
                    provider,
                )
            )
    base = "http://127.0.0.1/fhir"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": f"{base}/Observation?patient={patient}&_count=20"}],
        "entry": [
            {"fullUrl": f"{base}/Observation/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in fast.observations_json(readings)
        ],
    }


def baseline_router() -> APIRouter:
    """This benchmark's routes: a fixed Bundle with more and more of a search's work around
    it (from the server's ceiling to one query), and the search through R4B models."""
    router = APIRouter(prefix="/bench")
    bundle = sample_bundle()
    encoded = orjson.dumps(bundle)

    @router.get("/bytes")
    async def fixed_bytes() -> Response:
        return FhirResponse(encoded)

    @router.get("/default", response_model=None)
    async def default_encoding() -> Any:
        return bundle  # no type to go by: FastAPI's jsonable_encoder, then JSONResponse

    @router.get("/typed")
    async def typed_encoding() -> dict[str, Any]:
        return bundle  # a return type: pydantic writes the JSON (FastAPI's fast path)

    @router.get("/token")
    async def token_checked(caller: CachedPrincipalDep) -> Response:
        return FhirResponse(encoded)

    @router.get("/select")
    async def one_select(caller: CachedPrincipalDep, request: Request) -> Response:
        async with resources_of(request).pool.connection() as conn:
            await (await conn.execute("SELECT 1")).fetchall()
        return FhirResponse(encoded)

    @router.get("/r4b/Observation")
    async def search_with_models(
        request: Request, caller: CachedPrincipalDep, context: AsyncContextDep
    ) -> Response:
        """The production search, each Observation built as a validated R4B model."""
        items = request.query_params.multi_items()
        return await search_response(
            items, request, caller, context, "Observation", observation_json=_r4b_observation
        )

    return router


def _r4b_observation(source: Any) -> dict[str, Any]:
    """An Observation as a validated fhir.resources R4B model, then its JSON dict."""
    result: dict[str, Any] = r4b.observation(source).model_dump(mode="json")
    return result


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    url: str
    server: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
