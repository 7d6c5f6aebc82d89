"""Request context as plain ASGI middleware: request id, request body cap (413) and deadline (408), metrics,
one log line."""

from __future__ import annotations

import json
import logging
import time
import uuid

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics import ServiceMetrics

log = logging.getLogger("app.access")


class _Refused(Exception):
    """A request refused while its body streams in (too large, too slow); the middleware answers it."""

    def __init__(self, status: int, code: str, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def new_request_id() -> str:
    return uuid.uuid4().hex


def error_body(code: str, detail: str, request_id: str) -> bytes:
    """The JSON of every error answered outside the app's handlers (same fields as theirs)."""
    return json.dumps({"detail": detail, "code": code, "request_id": request_id}).encode()


def declared_length(scope: Scope) -> int:
    """The Content-Length header, 0 when absent or not a number."""
    try:
        return int(dict(scope.get("headers") or []).get(b"content-length", b"0"))
    except ValueError:
        return 0


class _Exchange:
    """One HTTP request passing through: its id, the body bytes received so far, the status answered."""

    def __init__(self, receive: Receive, send: Send, limit: int, body_timeout: float):
        self.id = new_request_id()
        self._receive, self._send, self.limit = receive, send, limit
        self.code, self.received = 500, 0
        # The whole body must be in by this time: a client that stalls or trickles holds the request.
        self.deadline, self.body_timeout, self.body_done = time.monotonic() + body_timeout, body_timeout, False
        self.refusal: _Refused | None = None
        self.answered = False

    def too_large(self) -> _Refused:
        return _Refused(413, "payload_too_large", f"request body is larger than the limit of {self.limit} bytes")

    def too_slow(self) -> _Refused:
        # The rest of the body is never read: the connection cannot carry another request.
        return _Refused(408, "request_timeout", f"request body not received within {self.body_timeout:g} s",
                        headers=((b"connection", b"close"),))

    async def refuse(self, refusal: _Refused) -> None:
        """Answer ``refusal`` as JSON, once."""
        self.refusal = refusal
        if self.answered:
            return
        body = error_body(refusal.code, refusal.detail, self.id)
        await self._send({"type": "http.response.start", "status": refusal.status,
                          "headers": [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode()), (b"x-request-id", self.id.encode()),
                                      *refusal.headers]})
        await self._send({"type": "http.response.body", "body": body})
        self.code, self.answered = refusal.status, True

    async def receive(self) -> Message:
        if self.body_done:  # e.g. a wait for http.disconnect while the answer is worked out: no deadline
            return await self._receive()
        try:
            with anyio.fail_after(max(self.deadline - time.monotonic(), 0)):
                message = await self._receive()
        except TimeoutError:
            self.refusal = self.too_slow()
            raise self.refusal from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.body_done = not message.get("more_body", False)
            if self.received > self.limit:
                self.refusal = self.too_large()
                raise self.refusal
        return message

    async def send(self, message: Message) -> None:
        if self.refusal is not None:
            # The app answered an aborted body (e.g. as a parse error): answer the refusal instead, once.
            await self.refuse(self.refusal)
            return
        if message["type"] == "http.response.start":
            self.code = message["status"]
            message["headers"] = [*message.get("headers", []), (b"x-request-id", self.id.encode())]
        await self._send(message)


class RequestContextMiddleware:
    """Assigns ``X-Request-ID``, refuses bodies over ``max_body_bytes`` with 413 (by header, or
    while streaming, so an oversized upload is never read whole) and bodies not received within
    ``body_timeout`` seconds with 408, and records metrics.
    The log line carries method, route, status, time and request id: no filenames, no pixels."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int, body_timeout: float):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(receive, send, self.max_body_bytes, self.body_timeout)
        scope.setdefault("state", {})["request_id"] = exchange.id
        start = time.perf_counter()
        if declared_length(scope) > self.max_body_bytes:
            await exchange.refuse(exchange.too_large())
        else:
            try:
                await self.app(scope, exchange.receive, exchange.send)
            except _Refused as refusal:
                await exchange.refuse(refusal)
        self._record(scope, exchange.code, start, exchange.id)

    def _record(self, scope: Scope, code: int, start: float, request_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(template, scope.get("method", ""), str(code)).inc()
        self.metrics.latency.labels(template).observe(elapsed)
        log.info("%s %s %d %.1fms id=%s", scope.get("method"), template, code, 1000 * elapsed, request_id)
