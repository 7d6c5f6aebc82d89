"""Liveness and readiness (never behind an API key: orchestrators probe them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    model: dict[str, str] | None = None


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process answers")
async def health() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/ready", response_model=ReadyResponse, summary="Readiness: 200 once the model is loaded and warmed up",
            responses={503: {"description": "model not loaded yet", "model": ReadyResponse}})
async def ready(request: Request):
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        return JSONResponse({"status": "starting", "model": None}, status_code=503)
    return ReadyResponse(status="ready", model=service.model_identity())
