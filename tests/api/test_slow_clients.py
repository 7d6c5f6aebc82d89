"""Slow and idle clients against a real service process, over raw sockets: request headers and bodies
have deadlines (408), idle connections are closed, and connections beyond the cap get 503.
Timeouts are set to a second through the settings, so each test takes a few seconds."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from app.core.server import PROBE_CONNECTIONS
from tests.conftest import ROOT, fixture_images, model_under_test
from tests.servers import answers, free_port, running, service

TIMEOUT_S = 1.0  # header, body and keep-alive timeouts of the services below
#: Longest a test waits for the server to act on a timeout before calling it a failure (nothing bounded it).
PATIENCE_S = 4.0
SHORT = {"COVIDSEG_HEADER_TIMEOUT": str(TIMEOUT_S), "COVIDSEG_BODY_TIMEOUT": str(TIMEOUT_S),
         "COVIDSEG_KEEPALIVE_TIMEOUT": str(TIMEOUT_S)}
CAP = 3


@contextlib.contextmanager
def plain_uvicorn(**env: str) -> Iterator[str]:
    """``uvicorn app.main:app``, the other documented way to start the service; yields its URL."""
    port = free_port()
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "COVIDSEG_LOG_LEVEL": "warning", **env}
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
                  "--log-level", "warning"], lambda: answers(f"{url}/ready"), "uvicorn", env=env, cwd=ROOT):
        yield url


@pytest.fixture(scope="module")
def short_service() -> Iterator[str]:
    with service(**SHORT) as url:
        yield url


@pytest.fixture(scope="module")
def short_uvicorn() -> Iterator[str]:
    with plain_uvicorn(**SHORT) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=PATIENCE_S)


def read_until_closed(sock: socket.socket, seconds: float = PATIENCE_S) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after ``seconds``."""
    data, deadline = b"", time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"connection still open after {seconds} s; received {data[:200]!r}"
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def read_response(sock: socket.socket, seconds: float = PATIENCE_S) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, on a connection that may stay open."""
    data, deadline = b"", time.monotonic() + seconds
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        left = deadline - time.monotonic()
        assert left > 0, f"no complete response within {seconds} s; received {data[:200]!r}"
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed mid-response: {data[:200]!r}"
            data += chunk
    return parse(data)


def _length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    return next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def dribble(sock: socket.socket, pieces: list[bytes], every: float) -> tuple[bytes, float]:
    """Send ``pieces`` one every ``every`` seconds (a slow client), reading what comes back meanwhile; stops
    when the server closes. Returns what it answered and when it closed, seconds after the first piece."""
    start, data = time.monotonic(), b""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except OSError:  # closed by the server (a reset once it is gone): what it sent was read below
            break
        ready, _, _ = select.select([sock], [], [], every)
        if ready:
            chunk = sock.recv(65536)
            if not chunk:
                return data, time.monotonic() - start
            data += chunk
    data += read_until_closed(sock, max(PATIENCE_S - (time.monotonic() - start), 0.1))
    return data, time.monotonic() - start


def assert_json_error(body: bytes, code: str, headers: dict[str, str]) -> dict:
    error = json.loads(body)
    assert set(error) == {"detail", "code", "request_id"} and error["code"] == code, error
    assert headers["content-type"] == "application/json" and headers["x-request-id"] == error["request_id"]
    return error


MULTIPART_HEAD = (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cxr.png\"\r\n"
                  b"Content-Type: image/png\r\n\r\n")


def upload_head(length: int) -> bytes:
    return (b"POST /segment HTTP/1.1\r\nHost: covidseg\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
            b"Content-Length: %d\r\n\r\n" % length)


def test_headers_sent_one_line_at_a_time_get_408_and_the_connection_closed(short_service):
    # Slowloris: every line comes well within the timeout, but the headers never end.
    socks = [connect(short_service) for _ in range(20)]
    for s in socks[1:]:
        s.sendall(b"GET /health HTTP/1.1\r\n")
    lines = [b"GET /health HTTP/1.1\r\n"] + [b"X-Slow-%d: %d\r\n" % (i, i) for i in range(40)]
    data, closed_after = dribble(socks[0], lines, every=TIMEOUT_S / 4)
    status, headers, body = parse(data)
    assert status == 408 and headers["connection"] == "close"
    assert_json_error(body, "request_timeout", headers)
    assert TIMEOUT_S * 0.8 <= closed_after < TIMEOUT_S + 2, closed_after
    for s in socks[1:]:  # the others opened at the same time are closed too, not held
        assert parse(read_until_closed(s, 2))[0] == 408
        s.close()


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(short_service):
    with connect(short_service) as s:
        start = time.monotonic()
        assert read_until_closed(s) == b""  # it asked nothing, so nothing is answered
        assert TIMEOUT_S * 0.8 <= time.monotonic() - start < TIMEOUT_S + 2


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(short_service):
    with connect(short_service) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\n\r\n")
        assert read_response(s)[0] == 200
        start = time.monotonic()
        assert read_until_closed(s) == b""
        assert time.monotonic() - start < TIMEOUT_S + 2  # uvicorn's own default would be 5 s


def test_the_next_request_on_a_kept_alive_connection_has_the_header_deadline_too(short_service):
    with connect(short_service) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\n\r\n")
        assert read_response(s)[0] == 200
        data, closed_after = dribble(s, [b"GET /health HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 40, every=TIMEOUT_S / 4)
        assert parse(data)[0] == 408
        assert closed_after < TIMEOUT_S + 2


@pytest.mark.parametrize("server", ["short_service", "short_uvicorn"])
def test_an_upload_that_stops_mid_body_gets_408_json(server, request):
    url = request.getfixturevalue(server)  # python -m app, and uvicorn app.main:app: the deadline is the app's
    with connect(url) as s:
        s.sendall(upload_head(100_000) + MULTIPART_HEAD + b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
        start = time.monotonic()
        status, headers, body = parse(read_until_closed(s))
        assert status == 408 and headers["connection"] == "close"
        assert TIMEOUT_S * 0.8 <= time.monotonic() - start < TIMEOUT_S + 2
    error = assert_json_error(body, "request_timeout", headers)
    assert "body" in error["detail"]
    # The service goes on answering complete uploads sent at an ordinary pace.
    image = fixture_images("Val", "COVID-19")[0].read_bytes()
    r = httpx.post(f"{url}/segment", files={"file": ("cxr.png", image, "image/png")}, timeout=60)
    assert r.status_code == 200 and r.json()["ppar"] >= 0


def test_a_body_that_keeps_trickling_in_is_cut_at_the_deadline(short_service):
    # Bytes arrive steadily, but the whole body would take 100 s: the deadline is for the whole body.
    with connect(short_service) as s:
        s.sendall(upload_head(100_000) + MULTIPART_HEAD)
        data, closed_after = dribble(s, [b"\0" * 100] * 100, every=TIMEOUT_S / 5)
    status, headers, body = parse(data)
    assert status == 408
    assert_json_error(body, "request_timeout", headers)
    assert closed_after < TIMEOUT_S + 2


def test_a_client_still_sending_after_the_body_deadline_reads_the_408_not_a_reset(short_service):
    # The client does not read while it sends: its later bytes reach a connection the server has answered.
    # Closing then, with that input unread, would reset the connection and could destroy the answer unread;
    # the server waits while input keeps coming (here 3 s, more than its 2 s without input).
    with connect(short_service) as s:
        s.sendall(upload_head(100_000) + MULTIPART_HEAD + b"\0" * 100)
        time.sleep(TIMEOUT_S + 0.5)  # the deadline passes: 408 sent
        for _ in range(15):
            s.sendall(b"\0" * 1000)  # still sending, not reading
            time.sleep(0.2)
        status, headers, body = parse(read_until_closed(s))
    assert status == 408
    assert_json_error(body, "request_timeout", headers)


def _open_counted(url: str) -> list[socket.socket]:
    """CAP connections the server holds: CAP - 1 idle after a request each, and one sending its headers slowly.
    Retried while connections of an earlier attempt (or of the readiness check) are still being closed."""
    for _ in range(10):
        socks = [connect(url) for _ in range(CAP - 1)]
        answered = []
        for s in socks:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\n\r\n")
            answered.append(read_response(s)[0])
        if answered == [200] * (CAP - 1):
            slow = connect(url)
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: cov")  # headers begun, never finished
            return [*socks, slow]
        for s in socks:
            s.close()
        time.sleep(0.3)
    raise AssertionError(f"could not open {CAP - 1} connections: {answered}")


def test_connections_beyond_the_cap_get_503_json_and_are_closed():
    with service(COVIDSEG_MAX_CONNECTIONS=str(CAP), COVIDSEG_HEADER_TIMEOUT="20") as url:
        held = _open_counted(url)
        with connect(url) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\n\r\n")
            status, headers, body = parse(read_until_closed(extra))
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert_json_error(body, "too_many_connections", headers)
        # An idle and a slow-header connection each count; once one goes, a new connection is served.
        held.pop().close()
        for _ in range(20):
            with connect(url) as again:
                again.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\nConnection: close\r\n\r\n")
                status = parse(read_until_closed(again))[0]
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200
        for s in held:
            s.close()


def test_the_probe_port_answers_while_the_cap_is_reached_and_serves_only_the_probes():
    probe_port = free_port()
    with service(COVIDSEG_MAX_CONNECTIONS=str(CAP), COVIDSEG_HEADER_TIMEOUT="20",
                 COVIDSEG_PROBE_PORT=str(probe_port)) as url:
        probe = f"http://127.0.0.1:{probe_port}"
        held = _open_counted(url)
        with connect(url) as extra:  # the service's port is full...
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\n\r\n")
            assert parse(read_until_closed(extra))[0] == 503
        for path in ("/health", "/ready"):  # ...and a liveness probe is still answered
            assert httpx.get(probe + path, timeout=PATIENCE_S).status_code == 200
        for method, path in (("GET", "/model"), ("POST", "/segment"), ("GET", "/"), ("GET", "/metrics")):
            r = httpx.request(method, probe + path, timeout=PATIENCE_S)
            assert r.status_code == 404, (path, r.status_code)
            assert_json_error(r.content, "not_found", r.headers)
            assert "serves only /health, /ready" in r.json()["detail"]
        # The probe port has its own small cap, and its connections do not count against the service's.
        idle = [connect(probe) for _ in range(PROBE_CONNECTIONS)]
        time.sleep(0.3)
        with connect(probe) as beyond:
            beyond.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\n\r\n")
            status, headers, body = parse(read_until_closed(beyond))
        assert status == 503 and assert_json_error(body, "too_many_connections", headers)
        held.pop().close()  # one place free on the service's port, with the probe port full
        assert _served_soon(url)
        for s in idle + held:
            s.close()
        # WebSocket upgrades (refused by the app) are no connections left behind on the probe port.
        for _ in range(PROBE_CONNECTIONS + 1):
            with connect(probe) as upgrade:
                upgrade.sendall(b"GET /health HTTP/1.1\r\nHost: covidseg\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                b"Sec-WebSocket-Version: 13\r\n\r\n")
                assert parse(read_until_closed(upgrade))[0] == 403
        assert _served_soon(probe, "/ready")
        assert httpx.get(f"{url}/model", timeout=PATIENCE_S).status_code == 200


def _served_soon(url: str, path: str = "/health") -> bool:
    """A new connection gets 200 within about two seconds (closed connections take a moment to be counted out)."""
    for _ in range(20):
        with connect(url) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: covidseg\r\nConnection: close\r\n\r\n" % path.encode())
            if parse(read_until_closed(s))[0] == 200:
                return True
        time.sleep(0.1)
    return False
