"""Dependencies injected into routes: settings, the loaded model service, API-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from app.core.auth import CHALLENGE, UNAUTHORIZED, key_is_valid
from app.core.config import Settings
from app.core.metrics import ServiceMetrics
from app.services.segmentation import SegmentationService

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="required on every route but /health and /ready when keys are configured")


# The dependencies are coroutines though none awaits anything: FastAPI runs a plain function in a
# worker thread, and those hand-offs were a good part of a request's overhead (bench/RESULTS.md).
async def settings_of(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_service(request: Request) -> SegmentationService:
    service: SegmentationService | None = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise HTTPException(503, detail={"code": "not_ready", "detail": "the model is not loaded yet"})
    return service


async def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if keys and not key_is_valid(keys, key):
        raise HTTPException(401, detail=UNAUTHORIZED, headers=CHALLENGE)


SettingsDep = Annotated[Settings, Depends(settings_of)]
ServiceDep = Annotated[SegmentationService, Depends(get_service)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
