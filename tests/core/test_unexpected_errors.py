"""An error nothing handles (a bug, planted by ``tests.faulty_app``), against a real server: a JSON 500 with its
request id that closes the connection, logged with a traceback but without the exception's message (which may
quote patient data), counted in the metrics; the server goes on answering."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fixture_images
from tests.faulty_app import PLANTED_MESSAGE
from tests.servers import service

COVID = fixture_images("Val", "COVID-19")


def requests_counted(url: str) -> dict[tuple[str, str], float]:
    """``covidseg_requests_total`` by (route, status)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "covidseg_requests")
    return {(s.labels["route"], s.labels["status"]): s.value for s in family.samples if s.name.endswith("_total")}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "service.log"
    with service(log, module="tests.faulty_app", COVIDSEG_LOG_LEVEL="info") as url:
        yield url, log


def test_an_unexpected_error_is_a_json_500_that_closes_the_connection(faulty):
    url, log = faulty
    with httpx.Client(timeout=60) as client:
        r = client.post(f"{url}/segment", files={"file": ("a.png", COVID[0].read_bytes())})
        assert r.status_code == 500
        body = r.json()
        assert body["code"] == "internal_error" and body["request_id"] == r.headers["x-request-id"]
        assert r.headers["connection"] == "close"  # the client knows not to send another request on it
        assert client.get(f"{url}/health").status_code == 200  # on a new connection: the server is fine
    text = log.read_text()
    line = next(x for x in text.splitlines() if body["request_id"] in x and "unexpected" in x)
    assert "RuntimeError" in line and "/segment" in line
    assert "engine.py" in text or "segmentation.py" in text  # the traceback's frames, for whoever fixes it
    assert "SMITH" not in text and "3680043.99" not in text  # never the message: it may quote the file


def test_a_500_is_counted_and_has_an_access_log_line(faulty):
    url, log = faulty
    before = requests_counted(url).get(("/segment", "500"), 0)
    r = httpx.post(f"{url}/segment", files={"file": ("a.png", COVID[1].read_bytes())}, timeout=60)
    assert r.status_code == 500
    assert requests_counted(url)[("/segment", "500")] == before + 1
    assert any(f"POST /segment 500" in x and r.headers["x-request-id"] in x for x in log.read_text().splitlines())


def test_the_next_request_on_a_kept_alive_connection_is_not_lost(faulty):
    """The fuzz run's symptom: after a 500 without Connection: close, the client's next request on the same
    connection got no answer. A raw socket sends two requests back to back (pipelined)."""
    url, _ = faulty
    host, port = url.removeprefix("http://").split(":")
    payload = COVID[0].read_bytes()
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    request = (f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 500 Internal Server Error"
    # the server said it would close, and did (recv returned b""): the client resends /health elsewhere
    assert b"connection: close" in answer.lower()
