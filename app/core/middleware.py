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


def declared_length(scope: Scope) -> int:
    """The Content-Length header, 0 when absent or not a number."""
    try:
        return int(dict(scope.get("headers") or []).get(b"content-length", b"0"))
    except ValueError:
        return 0


class _Exchange:
    """One HTTP request passing through: its id, the body bytes received so far, the status answered."""

    def __init__(self, receive: Receive, send: Send, limit: int):
        self.id = uuid.uuid4().hex
        self._receive, self._send, self.limit = receive, send, limit
        self.code, self.received = 500, 0
        self.too_large = self.answered_413 = False

    async def refuse_413(self) -> None:
        body = json.dumps({"detail": f"request body is larger than the limit of {self.limit} bytes",
                           "code": "payload_too_large", "request_id": self.id}).encode()
        await self._send({"type": "http.response.start", "status": 413,
                          "headers": [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode()), (b"x-request-id", self.id.encode())]})
        await self._send({"type": "http.response.body", "body": body})
        self.code, self.answered_413 = 413, True

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.too_large = True
                raise _BodyTooLarge()
        return message

    async def send(self, message: Message) -> None:
        if self.too_large:
            # The app answered an aborted body (e.g. as a parse error): answer 413 instead, once.
            if not self.answered_413:
                await self.refuse_413()
            return
        if message["type"] == "http.response.start":
            self.code = message["status"]
            message["headers"] = [*message.get("headers", []), (b"x-request-id", self.id.encode())]
        await self._send(message)


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
        exchange = _Exchange(receive, send, self.max_body_bytes)
        scope.setdefault("state", {})["request_id"] = exchange.id
        start = time.perf_counter()
        if declared_length(scope) > self.max_body_bytes:
            await exchange.refuse_413()
        else:
            try:
                await self.app(scope, exchange.receive, exchange.send)
            except _BodyTooLarge:
                if not exchange.answered_413:
                    await exchange.refuse_413()
        self._record(scope, exchange.code, start, exchange.id)

    def _record(self, scope: Scope, code: int, start: float, request_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(template, scope.get("method", ""), str(code)).inc()
        self.metrics.latency.labels(template).observe(elapsed)
        log.info("%s %s %d %.1fms id=%s", scope.get("method"), template, code, 1000 * elapsed, request_id)
