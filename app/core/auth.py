"""API keys: the one check, and an ASGI gate that applies it before a request's body is read.

FastAPI parses a whole multipart body before it runs a route's dependencies, so without the gate a caller
with no key could make the service hold a full batch upload (hundreds of MB) before its 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

UNAUTHORIZED = {"code": "unauthorized", "detail": "missing or invalid X-API-Key header"}
CHALLENGE = {"WWW-Authenticate": "ApiKey"}


def key_is_valid(keys: Iterable[str], supplied: str | None) -> bool:
    """Whether ``supplied`` is one of ``keys``, compared with every key in constant time (no early stop)."""
    given, ok = (supplied or "").encode(), False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok


class ApiKeyGate:
    """Answers 401 to a request for one of ``paths`` without a valid ``X-API-Key``, before the app reads
    its body; the same answer as the routes' own check (which stays, for the OpenAPI description)."""

    def __init__(self, app: ASGIApp, keys: list[str], paths: set[str]):
        self.app, self.keys, self.paths = app, keys, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"] in self.paths:
            supplied = dict(scope.get("headers") or []).get(b"x-api-key", b"").decode("latin-1")
            if not key_is_valid(self.keys, supplied):
                body = {"detail": UNAUTHORIZED["detail"], "code": UNAUTHORIZED["code"]}
                request_id = (scope.get("state") or {}).get("request_id")
                if request_id:
                    body["request_id"] = request_id
                await JSONResponse(body, status_code=401, headers=CHALLENGE)(scope, receive, send)
                return
        await self.app(scope, receive, send)
