"""Load shed before the body is read: when the admission's queue is already longer than its bound (or the service
is shutting down), a segmentation request is answered 503 with Retry-After from its headers alone, without
receiving and parsing an upload of megabytes that would be refused anyway. Under a heavy overload that work is
what would otherwise take the cores from the requests being served."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.services.admission import Admission

log = logging.getLogger("app.errors")


class LoadShedGate:
    """Answers 503 to a POST to one of ``paths`` that :meth:`Admission.refusal_now` refuses, before its body is
    read, closing the connection (the client may still be sending its upload)."""

    def __init__(self, app: ASGIApp, routes: dict[str, BaseRoute], admission: Callable[[], Admission | None]):
        self.app, self.routes, self.admission = app, routes, admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self.admission() if scope["type"] == "http" and scope["path"] in self.routes else None
        refusal = admission.refusal_now() if admission is not None and scope["method"] == "POST" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes[scope["path"]]  # counted under its route, as the router would have named it
        request_id = (scope.get("state") or {}).get("request_id", "-")
        log.info("refused on %s before its body: 503 %s (request %s)", scope["path"], refusal.code, request_id)
        body = {"detail": refusal.message, "code": refusal.code, "request_id": request_id}
        headers = {"Retry-After": str(refusal.retry_after), "Connection": "close"}
        await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send)
