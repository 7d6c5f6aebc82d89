"""Answers the server gives before the app sees a request (503 at the connection cap, 408 for headers not in time,
400 for bytes that are not HTTP) are JSON like every other error, and counted in ``covidseg_requests_total`` under
the route ``connection``; a client that hangs up mid-upload is counted as 499, not as the client's 400.
Against a real server (``python -m app``)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.core.test_unexpected_errors import requests_counted
from tests.servers import service


@pytest.fixture(scope="module")
def url():
    with service(COVIDSEG_MAX_CONNECTIONS="3", COVIDSEG_HEADER_TIMEOUT="1") as found:
        yield found


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_connection_over_the_cap_is_counted(url):
    before = requests_counted(url).get(("connection", "503"), 0)
    held = [socket.create_connection(address(url)) for _ in range(3)]
    try:
        with socket.create_connection(address(url), timeout=10) as extra:
            answer = read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503") and b'"code": "too_many_connections"' in answer
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)  # the held connections closed on the server's side too
    assert requests_counted(url)[("connection", "503")] == before + 1


def test_headers_not_in_time_are_counted(url):
    before = requests_counted(url).get(("connection", "408"), 0)
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\n")  # and no end of the headers
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert requests_counted(url)[("connection", "408")] == before + 1


@pytest.mark.parametrize("request_bytes", [
    b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
    b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["malformed-content-length", "content-length-with-chunked", "100-kb-url"])
def test_bytes_that_are_not_http_get_a_json_400(url, request_bytes):
    before = requests_counted(url).get(("connection", "400"), 0)
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
    assert b'"code": "bad_request"' in body and b"x-request-id" in head.lower()
    assert requests_counted(url)[("connection", "400")] == before + 1


def test_a_client_gone_mid_upload_is_counted_as_499(url):
    before = requests_counted(url).get(("/segment", "499"), 0)
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                     b"filename=\"a.png\"\r\n\r\n" + b"\x89PNG" * 100)
        time.sleep(0.3)
    deadline = time.time() + 10
    while requests_counted(url).get(("/segment", "499"), 0) == before and time.time() < deadline:
        time.sleep(0.2)
    counted = requests_counted(url)
    assert counted[("/segment", "499")] == before + 1
    assert counted.get(("/segment", "400"), 0) == 0  # not the client's bad request: it left


def test_a_trailing_slash_is_a_json_404_not_an_empty_redirect(url):
    import httpx

    r = httpx.post(f"{url}/segment/", files={"file": ("a.png", b"x")}, timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
