"""Request context as plain ASGI middleware: request id, request body cap (413), metrics, one log line."""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics import ServiceMetrics

log = logging.getLogger("app.access")


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Assigns ``X-Request-ID``, refuses bodies over ``max_body_bytes`` with 413 (by header, or
    while streaming, so an oversized upload is never read whole), and records metrics.
    The log line carries method, route, status, time and request id: no filenames, no pixels."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = {"code": 500, "too_large": False, "sent": False}
        limit = self.max_body_bytes

        async def send_413() -> None:
            body = json.dumps({"detail": f"request body is larger than the limit of {limit} bytes",
                               "code": "payload_too_large", "request_id": request_id}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})
            status.update(code=413, sent=True)

        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > limit:
            await send_413()
            self._record(scope, 413, start, request_id)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    status["too_large"] = True
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            if status["too_large"]:
                # The app answered an aborted body (e.g. as a parse error): answer 413 instead, once.
                if not status["sent"]:
                    await send_413()
                return
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not status["sent"]:
                await send_413()
        self._record(scope, status["code"], start, request_id)

    def _record(self, scope: Scope, code: int, start: float, request_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(template, scope.get("method", ""), str(code)).inc()
        self.metrics.latency.labels(template).observe(elapsed)
        log.info("%s %s %d %.1fms id=%s", scope.get("method"), template, code, 1000 * elapsed, request_id)
