"""The request middleware's body deadline, fast, at the ASGI level (the real-socket tests are in
tests/api/test_slow_clients.py)."""

from __future__ import annotations

import json

import anyio

from app.core.metrics import ServiceMetrics
from app.core.middleware import RequestContextMiddleware


async def read_body_then_wait_for_disconnect(scope, receive, send) -> None:
    """A small ASGI app: reads the whole body, then waits for the client as a streaming answer would."""
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    with anyio.move_on_after(0.5):  # long past the body deadline below
        await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def run(messages: list[dict], body_timeout: float) -> list[dict]:
    """The middleware around the app above, fed ``messages`` and then nothing (a client that stalls)."""
    sent: list[dict] = []
    queue = list(messages)

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()

    async def send(message: dict) -> None:
        sent.append(message)

    middleware = RequestContextMiddleware(read_body_then_wait_for_disconnect, ServiceMetrics(),
                                          max_body_bytes=1000, body_timeout=body_timeout)
    scope = {"type": "http", "method": "POST", "path": "/segment", "headers": []}
    anyio.run(middleware, scope, receive, send)
    return sent


def test_a_body_that_stops_is_answered_408_json_once():
    sent = run([{"type": "http.request", "body": b"abc", "more_body": True}], body_timeout=0.1)
    start, body = sent
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    error = json.loads(body["body"])
    assert error["code"] == "request_timeout" and (b"x-request-id", error["request_id"].encode()) in start["headers"]


def test_once_the_body_is_in_waiting_for_the_client_has_no_deadline():
    sent = run([{"type": "http.request", "body": b"abc", "more_body": True},
                {"type": "http.request", "body": b"def", "more_body": False}], body_timeout=0.1)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"abcdef"
