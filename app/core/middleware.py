"""Request context as plain ASGI middleware: request id, request body cap (413) and deadline (408), the last
resort for unexpected errors (a JSON 500), metrics, one log line."""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.disconnect import ClientGone
from app.core.metrics import ServiceMetrics

log = logging.getLogger("app.access")
errors_log = logging.getLogger("app.errors")

#: The status counted and logged for a request whose client hung up before its answer (nginx's convention).
CLIENT_CLOSED = 499
#: Answers left out of the latency histogram: a shed request's 503 comes at once, and under overload those would
#: pull the p95 down, hiding the overload from an autoscaler that scales on it (components/scale-on-latency).
UNTIMED = frozenset({503, CLIENT_CLOSED})


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
        self.answered = False  # a refusal answered
        self.started = False  # an answer's start sent
        self.disconnected = False  # the client hung up before its body was in or before its answer
        self.failed = False  # an error nothing handled

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
            message = await self._receive()
            # after an answer has begun, the server's disconnect is the end of the exchange, not a client gone
            self.disconnected |= message["type"] == "http.disconnect" and not self.started
            return message
        try:
            with anyio.fail_after(max(self.deadline - time.monotonic(), 0)):
                message = await self._receive()
        except TimeoutError:
            self.refusal = self.too_slow()
            raise self.refusal from None
        if message["type"] == "http.disconnect":
            self.disconnected = True
        elif message["type"] == "http.request":
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
            self.code, self.started = message["status"], True
            message["headers"] = [*message.get("headers", []), (b"x-request-id", self.id.encode())]
        await self._send(message)

    async def fail(self, exc: Exception, path: str) -> None:
        """The last resort for an error nothing else handled: logged with its traceback, answered as a JSON 500
        (when no answer has begun) that closes the connection, since the state of the request's body is
        unknown."""
        log_unexpected(exc, path, self.id)
        self.code, self.failed = 500, True
        if self.started or self.answered or self.disconnected:
            return
        body = error_body("internal_error", "internal error; the request id identifies it in the logs", self.id)
        await self._send({"type": "http.response.start", "status": 500,
                          "headers": [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode()),
                                      (b"x-request-id", self.id.encode()), (b"connection", b"close")]})
        await self._send({"type": "http.response.body", "body": body})
        self.started = True

    @property
    def outcome(self) -> int:
        """The status to count and log: what was answered, or :data:`CLIENT_CLOSED` when the client hung up
        first (whatever the app made of the broken request)."""
        return CLIENT_CLOSED if self.disconnected and not self.failed else self.code


def log_unexpected(exc: BaseException, path: str, request_id: str) -> None:
    """An error log line with the traceback's frames and the exception's type, not its message: messages of
    decoders quote the file's content, and files are patient data."""
    frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    errors_log.error("unexpected %s on %s (request %s); message left out, traceback:\n%s", type(exc).__name__, path,
                     request_id, frames)


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
            except ClientGone:  # nobody to answer: counted as such below
                exchange.disconnected = True
            except Exception as exc:  # noqa: BLE001 - the last resort: answered, logged and counted here
                await exchange.fail(exc, scope.get("path", ""))
        self._record(scope, exchange.outcome, start, exchange.id)

    def _record(self, scope: Scope, code: int, start: float, request_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(template, scope.get("method", ""), str(code)).inc()
        if code not in UNTIMED:
            self.metrics.latency.labels(template).observe(elapsed)
        log.info("%s %s %d %.1fms id=%s", scope.get("method"), template, code, 1000 * elapsed, request_id)
