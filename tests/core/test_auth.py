"""The API-key gate: a request without a key is refused before the app reads a byte of its body (FastAPI
would read a whole upload before the route's own key check), with the same answer as that check."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import make_client

UPLOAD = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"300000000")]


async def answer_without_sending_the_body(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict]:
    """Send only the request's head; the body never comes. Returns the status and JSON body answered."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent: list[dict] = []
    body_read = asyncio.Event()

    async def receive():
        body_read.set()
        await asyncio.Event().wait()  # a client that sends nothing more

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    assert not body_read.is_set()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.mark.parametrize("path", ["/segment", "/segment/batch"])
def test_an_upload_without_a_key_is_refused_before_its_body_is_read(path):
    with make_client(api_keys=["k1"], max_upload_bytes=20_000_000) as client:
        status, body = asyncio.run(answer_without_sending_the_body(client.app, path, UPLOAD))
        assert status == 401 and body["code"] == "unauthorized"
        same = client.post(path, files={"file": ("x.png", b"x")})  # the route's own answer, body read
        assert same.status_code == 401 and same.json()["detail"] == body["detail"]
        assert same.headers["www-authenticate"] == "ApiKey"


def test_a_wrong_key_is_refused_and_the_right_one_passes_the_gate():
    with make_client(api_keys=["k1"]) as client:
        status, _ = asyncio.run(answer_without_sending_the_body(client.app, "/segment",
                                                                [*UPLOAD, (b"x-api-key", b"k2")]))
        assert status == 401
        assert client.get("/model", headers={"X-API-Key": "k1"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
