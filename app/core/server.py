"""The HTTP server of ``python -m app``: uvicorn, with a deadline on request headers and a cap on open
connections, so that slow or idle clients cannot hold sockets without bound.

uvicorn alone closes a connection only when it has been idle after a response (``timeout_keep_alive``):
a connection that never completes its request headers stays open, and its ``limit_concurrency``
counts such connections but answers 503 only to a request whose headers have arrived. Here each
connection must complete a request's headers within ``header_timeout`` seconds of being opened or of
that request's first byte (else 408 and closed, or closed silently when nothing was sent), and a
connection beyond ``max_connections`` open ones is answered 503 at once and closed. Request bodies
have their deadline in :mod:`app.core.middleware`, which ``uvicorn app.main:app`` also runs.

Every close lets the client read the answer first (:class:`_GracefulClose`): closing with unread input
would reset the connection, and a reset can destroy a 408 that the client has not read yet.

The cap would also refuse an orchestrator's liveness probe while slow clients hold every connection, and
a restart would drop the requests in flight. So ``probe_port`` (when set) is a second listener that serves
only ``/health`` and ``/ready``, outside the cap, with a small cap of its own (:data:`PROBE_CONNECTIONS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from http import HTTPStatus
from collections.abc import Callable
from typing import ClassVar

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import Settings
from app.core.metrics import ServiceMetrics
from app.core.middleware import error_body, new_request_id

log = logging.getLogger("app.server")

#: How long a closing connection (a refused one, or one uvicorn closes) stays half-open without input, so
#: that the client reads the answer instead of a reset (closing a socket with unread input sends RST).
LINGER_IDLE_S = 2.0
#: A client still sending keeps a closing connection open (its input read and dropped) up to this long, so
#: that one that reads only after sending all of a slow upload still reads its 408 (nginx: lingering_time).
LINGER_MAX_S = 30.0
#: What the probe port serves.
PROBE_PATHS = frozenset({"/health", "/ready"})
#: Open connections to the probe port at most (a kubelet opens one per probe, and closes it).
PROBE_CONNECTIONS = 8


#: The route label under which answers given before any request was read are counted (no route is known).
CONNECTION_ROUTE = "connection"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_connections: int
    probe_port: int = 0  # 0: none
    metrics: ServiceMetrics | None = None  # where the server's own answers are counted

    def count(self, status: int) -> None:
        """Count an answer the server gave itself (503 at the cap, 408 for late headers, 400 for malformed HTTP)
        with the app's answers, so that an alert on the error rate sees them."""
        if self.metrics is not None:
            self.metrics.requests.labels(CONNECTION_ROUTE, "", str(status)).inc()


def error_response(status: int, code: str, detail: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 error answer with the service's JSON error body, closing the connection."""
    request_id = new_request_id()
    body = error_body(code, detail, request_id)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", f"x-request-id: {request_id}", "connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _GracefulClose:
    """A connection's transport as uvicorn sees it, whose ``close()`` lets the client read the answer first:
    closing a socket with unread input (the rest of a body cut at its deadline, say) sends RST, which can
    destroy the 408 on the client's side before it is read. So: FIN after the answer, input read and
    dropped, closed at the client's EOF, after :data:`LINGER_IDLE_S` without input, or after
    :data:`LINGER_MAX_S` in all."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol):
        self._transport, self._protocol, self._closing = transport, protocol, False

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._protocol._drain_and_close(self._transport)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self._closing:  # after close() a write is dropped, as the transport itself drops it
            self._transport.write(data)

    def writelines(self, lines) -> None:
        if not self._closing:
            self._transport.writelines(lines)

    def __getattr__(self, name: str):  # everything else is the transport's own
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline and the connection cap of ``limits``
    (set on a subclass by :func:`protocol_class`)."""

    limits: ClassVar[ConnectionLimits]
    probes: ClassVar[set[GuardedHttpToolsProtocol]]  # the open connections to the probe port

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_until = 0.0  # loop time by which a closing connection is closed, input or not
        self._socket_transport: asyncio.Transport | None = None  # uvicorn's is a _GracefulClose around it
        self._refused = False  # never admitted: uvicorn does not know this connection
        self._draining = False  # answered and closing: input is read and dropped until then
        self._started_request = False  # bytes of a request whose headers are not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        probe = self._to_probe_port(transport)
        if probe:
            full = len(self.probes) >= PROBE_CONNECTIONS
        else:  # uvicorn's connections are those to both ports
            full = len(self.connections) - len(self.probes) >= self.limits.max_connections
        if full:
            self._refuse(transport, PROBE_CONNECTIONS if probe else self.limits.max_connections)
            return
        self._socket_transport = transport
        super().connection_made(_GracefulClose(transport, self))  # type: ignore[arg-type]
        if probe:
            self.probes.add(self)
        self._start_header_timer()

    def _to_probe_port(self, transport: asyncio.Transport) -> bool:
        sockname = transport.get_extra_info("sockname")
        return bool(self.limits.probe_port) and isinstance(sockname, tuple) and sockname[1] == self.limits.probe_port

    def data_received(self, data: bytes) -> None:
        if self._refused or self._draining:  # read and dropped, so that closing later sends FIN, not RST
            if self._draining:
                self._linger(self._socket_transport)  # a client still sending: wait for it (refused: not)
            return
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are complete
            self._started_request = False
            self._stop_header_timer()
        elif (cycle is None or cycle.response_complete) and not self.transport.is_closing():
            self._started_request = True  # a request has begun and its headers are not all here
            if self._header_timer is None:
                self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self.probes.discard(self)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self._refused:
            return
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._stop_header_timer()  # the transport now belongs to the websocket protocol
        self.probes.discard(self)  # and this protocol's connection_lost is never called
        self.transport = self._socket_transport  # which closes it its own way
        super().handle_websocket_upgrade()

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_overdue)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._started_request:  # a client that sent nothing is not answered: it asked nothing
            log.info("request headers not complete within %g s: 408, connection closed", self.limits.header_timeout)
            self.transport.write(error_response(408, "request_timeout", "request headers not received within "
                                                f"{self.limits.header_timeout:g} s"))
            self.limits.count(408)
        self.transport.close()  # answered (or not): drained, then closed

    def _refuse(self, transport: asyncio.Transport, cap: int) -> None:
        """Answer 503 before reading anything, then close once the client has read it (or soon)."""
        self._refused = True
        log.warning("%d connections open: a new one refused with 503", cap)
        transport.write(error_response(503, "too_many_connections", f"the service has {cap} connections open; "
                                       "retry later", "retry-after: 1"))
        self.limits.count(503)
        self._close_after_answer(transport)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP (a malformed Content-Length, Content-Length with chunked,
        a URL over the parser's limit), as the service's JSON error instead of uvicorn's plain text."""
        self.transport.write(error_response(400, "bad_request", "invalid HTTP request: the request line or "
                                            "headers could not be parsed"))
        self.limits.count(400)
        self.transport.close()

    def _drain_and_close(self, transport: asyncio.Transport) -> None:
        """Input read and dropped from now on, and the connection closed once the client has read the answer."""
        if transport.is_closing():  # the client has gone (connection_lost closes it again): nothing to wait for
            transport.close()
            return
        self._draining = True
        self._stop_header_timer()
        with contextlib.suppress(RuntimeError, OSError):
            transport.resume_reading()  # uvicorn may have paused it while the app was not reading the body
        self._close_after_answer(transport)

    def _close_after_answer(self, transport: asyncio.Transport) -> None:
        """Close once the client has read what was written (its EOF in answer), or soon: closing at once
        with its unread input would send RST, which can destroy the answer on the client's side."""
        if transport.can_write_eof():
            transport.write_eof()  # the client's EOF in answer closes the transport (eof_received)
        self._linger_until = self.loop.time() + LINGER_MAX_S
        self._linger(transport)

    def _linger(self, transport: asyncio.Transport | None) -> None:
        """(Re)arm the close of a closing connection: :data:`LINGER_IDLE_S` from now, within its whole linger."""
        if transport is None or transport.is_closing():
            return
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        delay = min(LINGER_IDLE_S, max(self._linger_until - self.loop.time(), 0.0))
        self._linger_timer = self.loop.call_later(delay, transport.close)


class ProbeOnly:
    """ASGI wrapper: on the probe port, only :data:`PROBE_PATHS`; anything else there is a 404 (the service's
    routes and their limits stay on the main port)."""

    def __init__(self, app: ASGIApp, probe_port: int):
        self.app = app
        self.probe_port = probe_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") or (None, None)
        if scope["type"] == "lifespan" or server[1] != self.probe_port or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        request_id = new_request_id()
        detail = f"port {self.probe_port} serves only {', '.join(sorted(PROBE_PATHS))}"
        await JSONResponse({"detail": detail, "code": "not_found", "request_id": request_id}, status_code=404,
                           headers={"x-request-id": request_id})(scope, receive, send)


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.run(http=...)`` (uvicorn instantiates it per connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits, "probes": set()})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose shutdown (SIGTERM, Ctrl-C) first calls ``on_shutdown``: the service refuses what
    is queued at once, so that only the work in progress is drained (within ``timeout_graceful_shutdown``)."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None] | None = None):
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list | None = None) -> None:
        log.info("shutting down: queued requests refused, those in work get up to %g s",
                 self.config.timeout_graceful_shutdown or 0)
        if self.on_shutdown is not None:
            self.on_shutdown()
        await super().shutdown(sockets)


def serve(app: ASGIApp, settings: Settings, metrics: ServiceMetrics | None = None,
          on_shutdown: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on ``settings.host:port`` (and the probe port, when set) until stopped, with the limits
    of ``settings``; the server's own answers are counted in ``metrics``; ``on_shutdown`` is called when a
    shutdown begins, before the drain."""
    if settings.probe_port and settings.probe_port == settings.port:
        raise SystemExit(f"COVIDSEG_PROBE_PORT must differ from the service's port {settings.port}")
    limits = ConnectionLimits(settings.header_timeout, settings.max_connections, settings.probe_port, metrics)
    options = {"host": settings.host, "log_level": settings.log_level, "access_log": False,
               "http": protocol_class(limits), "timeout_keep_alive": settings.keepalive_timeout,
               "timeout_graceful_shutdown": settings.drain_timeout}
    served = ProbeOnly(app, settings.probe_port) if settings.probe_port else app
    config = uvicorn.Config(served, port=settings.port, **options)
    sockets = [config.bind_socket()]
    if settings.probe_port:
        sockets.append(uvicorn.Config(app, port=settings.probe_port, **options).bind_socket())
    server = DrainingServer(config, on_shutdown)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C ends it quietly, as it does uvicorn.run
        server.run(sockets=sockets)
    if not server.started:  # as uvicorn.run: the start failed (the model did not load, say)
        raise SystemExit(3)
