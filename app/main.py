"""The FastAPI application: ``create_app(settings)``; ``app`` for ``uvicorn app.main:app``."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi.params import Depends as Dependency
from fastapi.routing import APIRoute
from starlette.formparsers import MultiPartParser
from starlette.routing import Route

from app import __version__
from app.api.deps import require_api_key
from app.api.schemas import KEYED_ERROR_RESPONSES, SERVICE_ERROR_RESPONSES
from app.api.routes import health, metrics, model, segment, viewer
from app.core import allocator
from app.core.auth import ApiKeyGate
from app.core.shedding import LoadShedGate
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.metrics import ServiceMetrics
from app.core.middleware import RequestContextMiddleware
from app.pipeline.infer import ModelLoadError
from app.services.segmentation import SegmentationService

log = logging.getLogger("app")

DESCRIPTION = """
Segments COVID-19 lung infection and the lung field on chest X-rays with a ResNet-34 U-Net
(ONNX Runtime). Returns infection masks, overlays, PPAR (predicted positive area ratio),
the infected share of the lung and a severity grade, as JSON or PNG, at the input's resolution.

Research and decision-support use; not a diagnostic device.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model is loaded (and warmed up) at start-up, not here."""
    settings = settings or get_settings()
    # Uploads stay in memory: Starlette spools files over 1 MB to a temporary file on disk by
    # default, and these files are patient data. The body cap below bounds the memory used.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_request_bytes + 1)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        allocator.map_large_blocks()  # images' memory returned when freed (app.core.allocator)
        try:
            service = SegmentationService.from_settings(settings)
            service.warm_up()
        except ModelLoadError as exc:
            log.error("cannot start: %s", exc)
            raise
        service.metrics = app.state.metrics
        app.state.service = service
        info = service.model.info
        app.state.metrics.model.info({"name": info.name, "version": info.version, "sha256": info.sha256,
                                      "providers": ",".join(info.providers)})
        log.info("model %s %s (%s, chosen by %s) ready on %s", info.name, info.version,
                 "int8" if info.quantization else "fp32", service.engine.model_choice, ",".join(info.providers))
        yield
        app.state.service = None

    # No redirect from /segment/ to /segment: a 307 with an empty body is no answer for an integration script.
    app = FastAPI(title="COVID-19 CXR infection segmentation", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.service = None
    install_error_handlers(app)
    protected = [Depends(require_api_key)]
    app.include_router(health.router, responses=SERVICE_ERROR_RESPONSES)
    if settings.viewer:  # the page is open; what it calls is behind the key
        app.include_router(viewer.router)
    keyed = [segment.router, model.router, metrics.router]
    for router in keyed:
        app.include_router(router, dependencies=protected, responses=KEYED_ERROR_RESPONSES)
    if not settings.docs_public:
        protect_docs(app, protected)
    # The same check before any body is read (FastAPI reads a whole upload before a route's dependencies).
    gated = {route.path for router in keyed for route in router.routes}
    # Innermost of the gates: a request without a key hears 401, not how busy the service is.
    app.add_middleware(LoadShedGate, routes={route.path: route for route in segment.router.routes},
                       admission=lambda: app.state.service.admission if app.state.service else None)
    app.add_middleware(ApiKeyGate, keys=settings.api_keys, paths=gated)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics, max_body_bytes=settings.max_request_bytes,
                       body_timeout=settings.body_timeout)
    return app


def protect_docs(app: FastAPI, dependencies: list[Dependency]) -> None:
    """Put FastAPI's own documentation routes (the schema, Swagger UI and its OAuth2 redirect, ReDoc)
    behind ``dependencies``, and only those: each is registered again in its place as an APIRoute
    with the same endpoint, so the pages themselves do not change."""
    paths = {app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url} - {None}
    for index, route in list(enumerate(app.router.routes)):
        if isinstance(route, Route) and not isinstance(route, APIRoute) and route.path in paths:
            app.router.add_api_route(route.path, route.endpoint, methods=sorted(route.methods or ["GET"]),
                                     name=route.name, include_in_schema=False, dependencies=dependencies)
            app.router.routes[index] = app.router.routes.pop()


app = create_app()
