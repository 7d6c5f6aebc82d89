"""The HTTP server of ``python -m app``: uvicorn, with a deadline on request headers and a cap on open
connections, so that slow or idle clients cannot hold sockets without bound.

uvicorn alone closes a connection only when it has been idle after a response (``timeout_keep_alive``):
a connection that never completes its request headers stays open, and its ``limit_concurrency``
counts such connections but answers 503 only to a request whose headers have arrived. Here each
connection must complete a request's headers within ``header_timeout`` seconds of being opened or of
that request's first byte (else 408 and closed, or closed silently when nothing was sent), and a
connection beyond ``max_connections`` open ones is answered 503 at once and closed. Request bodies
have their deadline in :mod:`app.core.middleware`, which ``uvicorn app.main:app`` also runs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import Settings
from app.core.middleware import error_body, new_request_id

log = logging.getLogger("app.server")

#: How long a refused connection stays half-open after its 503, so that the client reads the answer
#: instead of a reset (closing a socket with unread input sends RST).
REFUSED_LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_connections: int


def error_response(status: int, code: str, detail: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 error answer with the service's JSON error body, closing the connection."""
    request_id = new_request_id()
    body = error_body(code, detail, request_id)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", f"x-request-id: {request_id}", "connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline and the connection cap of ``limits``
    (set on a subclass by :func:`protocol_class`)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False  # never admitted: uvicorn does not know this connection
        self._draining = False  # answered and closing: input is read and dropped until then
        self._started_request = False  # bytes of a request whose headers are not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._draining:
            return  # read and dropped, so that closing later sends FIN, not RST
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
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self._refused:
            return
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._stop_header_timer()  # the transport now belongs to the websocket protocol
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
        self._draining = True
        self._close_after_answer(self.transport)

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 before reading anything, then close once the client has read it (or soon)."""
        self._refused = True
        log.warning("%d connections open: a new one refused with 503", self.limits.max_connections)
        transport.write(error_response(503, "too_many_connections", "the service has "
                                       f"{self.limits.max_connections} connections open; retry later",
                                       "retry-after: 1"))
        self._close_after_answer(transport)

    def _close_after_answer(self, transport: asyncio.Transport) -> None:
        """Close once the client has read what was written (its EOF in answer), or soon: closing at once
        with its unread input would send RST, which can destroy the answer on the client's side."""
        if transport.can_write_eof():
            transport.write_eof()  # the client's EOF in answer closes the transport (eof_received)
        self._linger_timer = self.loop.call_later(REFUSED_LINGER_S, transport.close)


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.run(http=...)`` (uvicorn instantiates it per connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def serve(app: object, settings: Settings) -> None:
    """Serve ``app`` on ``settings.host:port`` until stopped, with the limits of ``settings``."""
    limits = ConnectionLimits(header_timeout=settings.header_timeout, max_connections=settings.max_connections)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                http=protocol_class(limits), timeout_keep_alive=settings.keepalive_timeout)
