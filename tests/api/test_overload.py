"""Under load, against a real server (``python -m app``): requests admitted by the memory of their images, load
shed with 503 and Retry-After instead of queued for minutes, work for clients that hung up dropped, and SIGTERM
with a full queue drained within its bound."""

from __future__ import annotations

import io
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fixture_images
from tests.core.test_unexpected_errors import requests_counted
from tests.servers import service, service_process

COVID = fixture_images("Val", "COVID-19")


def png_of_side(side: int, index: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.open(COVID[index % len(COVID)]).convert("L").resize((side, side), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def images_segmented(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next(f for f in text_string_to_metric_families(text) if f.name == "covidseg_images").samples[0].value


def histogram_count(url: str, name: str, **labels: str) -> float:
    """How many observations a histogram of /metrics holds (those with ``labels``)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    return next(s.value for s in family.samples
                if s.name.endswith("_count") and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_admitted(url: str, count: int, seconds: float = 120) -> None:
    """Until ``count`` requests have been admitted to work (the admission's wait histogram counts each)."""
    deadline = time.monotonic() + seconds
    while histogram_count(url, "covidseg_admission_wait_seconds") < count:
        assert time.monotonic() < deadline, "the request was not admitted"
        time.sleep(0.1)


def batch_files(data: bytes, count: int) -> list:
    return [("files", (f"{i}.png", data)) for i in range(count)]


def raw_request(url: str, data: bytes) -> tuple[tuple[str, int], bytes]:
    host, port = url.removeprefix("http://").split(":")
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png"
            b"\r\n\r\n" + data + b"\r\n--b--\r\n")
    head = (f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return (host, int(port)), head + body


def in_background(call) -> tuple[threading.Thread, dict]:
    """``call()`` in a thread; its result (or error) in the dict once done."""
    out: dict = {}

    def run():
        try:
            out["result"] = call()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_request_over_the_work_memory_is_refused_413_and_one_within_is_served():
    with service(COVIDSEG_WORK_MEMORY_MB="150") as url:
        image = png_of_side(2048)
        r = httpx.post(f"{url}/segment/batch", files=batch_files(image, 4), timeout=120)
        assert r.status_code == 413 and r.json()["code"] == "too_many_pixels"
        assert "COVIDSEG_WORK_MEMORY_MB" in r.json()["detail"]
        assert httpx.post(f"{url}/segment", files={"file": ("a.png", image)}, timeout=120).status_code == 200


def test_work_for_clients_that_hung_up_while_queued_is_dropped():
    with service(COVIDSEG_IMAGE_CONCURRENCY="1", COVIDSEG_MAX_QUEUE_WAIT_S="120") as url:
        before = images_segmented(url)
        large = png_of_side(3000)
        busy, answer = in_background(lambda: httpx.post(f"{url}/segment/batch", files=batch_files(large, 12),
                                                        timeout=300))
        wait_admitted(url, 1)  # its body is in and it is at work
        address, request = raw_request(url, png_of_side(256))
        for _ in range(5):  # each sends a whole request, then hangs up while it waits behind the batch
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(request)
                time.sleep(0.1)
        assert busy.is_alive(), "the batch ended before the abandoned requests were queued: make it larger"
        busy.join(300)
        assert answer["result"].status_code == 200
        assert httpx.post(f"{url}/segment", files={"file": ("a.png", png_of_side(256))}, timeout=60).status_code == 200
        assert images_segmented(url) == before + 12 + 1  # the batch and the last request: none of the abandoned
        assert requests_counted(url).get(("/segment", "499")) == 5, requests_counted(url)


def test_a_client_gone_during_its_work_keeps_its_memory_counted_until_the_work_ends():
    """Its thread cannot be stopped: the admission must not let the next request in (with its memory) before the
    abandoned work has let go of its images."""
    with service(COVIDSEG_IMAGE_CONCURRENCY="1", COVIDSEG_MAX_QUEUE_WAIT_S="120") as url:
        address, request = raw_request(url, png_of_side(3000))
        request = request.replace(b"POST /segment ", b"POST /segment?include=mask,overlay,probability,lung ")
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(request)
            wait_admitted(url, 1)  # at work
        # hung up: its work goes on, and a new request waits for it
        before = httpx.get(f"{url}/metrics", timeout=10).text
        r = httpx.post(f"{url}/segment", files={"file": ("a.png", png_of_side(256))}, timeout=120)
        assert r.status_code == 200
        waited = histogram_sum(url, "covidseg_admission_wait_seconds") - histogram_sum_of(before)
        assert waited > 0.05, "admitted while the abandoned work still held its memory"
        assert requests_counted(url)[("/segment", "499")] == 1


def histogram_sum_of(text: str, name: str = "covidseg_admission_wait_seconds") -> float:
    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    return next(s.value for s in family.samples if s.name.endswith("_sum"))


def histogram_sum(url: str, name: str) -> float:
    return histogram_sum_of(httpx.get(f"{url}/metrics", timeout=10).text, name)


def test_overload_is_shed_with_503_and_retry_after_instead_of_queued(tmp_path: Path):
    # 24 clients of 3000 px images (0.3-0.5 s each, one at a time): a queue of several times the bound
    bound = 3.0
    log = tmp_path / "service.log"
    with service(log, COVIDSEG_IMAGE_CONCURRENCY="1", COVIDSEG_MAX_QUEUE_WAIT_S=str(bound),
                 COVIDSEG_LOG_LEVEL="info") as url:
        image = png_of_side(3000)
        stop = time.monotonic() + 25

        def client(_: int) -> list[tuple[int, float, str | None, str | None]]:
            seen = []
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop:
                    t0 = time.monotonic()
                    r = http.post(f"{url}/segment", files={"file": ("a.png", image)})
                    code = r.json().get("code") if r.status_code != 200 else None
                    seen.append((r.status_code, time.monotonic() - t0, r.headers.get("retry-after"), code))
                    if r.status_code == 503:
                        time.sleep(0.2)
            return seen

        with ThreadPoolExecutor(24) as pool:
            answers = [a for seen in pool.map(client, range(24)) for a in seen]
        timed = histogram_count(url, "covidseg_request_duration_seconds", route="/segment")
        counted = requests_counted(url)
        waits = histogram_count(url, "covidseg_admission_wait_seconds")
    served = [a for a in answers if a[0] == 200]
    shed = [a for a in answers if a[0] == 503]
    assert {a[0] for a in answers} <= {200, 503} and served and shed
    assert all(a[3] == "overloaded" and int(a[2]) >= 1 for a in shed)
    # foreseen: most refusals come at once, long before the bound, not after waiting it out
    assert sorted(a[1] for a in shed)[len(shed) // 2] < bound / 2
    # the quick 503s are left out of the latency the autoscaler scales on: it sees the served requests' wait
    assert timed == len(served) == waits  # and each served request's wait for admission is measured
    # with a queue already past the bound, requests are refused from their headers, their uploads never parsed
    assert "before its body: 503 overloaded" in log.read_text()
    assert counted[("/segment", "503")] == len(shed)  # every 503 under its route, whichever step refused it


def test_sigterm_with_a_full_queue_refuses_the_queued_finishes_the_work_and_exits(tmp_path: Path):
    log = tmp_path / "service.log"
    with service_process(log, COVIDSEG_IMAGE_CONCURRENCY="1", COVIDSEG_MAX_QUEUE_WAIT_S="300",
                         COVIDSEG_DRAIN_TIMEOUT="60", COVIDSEG_LOG_LEVEL="info") as (url, proc):
        large = png_of_side(3000)
        busy, batch = in_background(lambda: httpx.post(f"{url}/segment/batch", files=batch_files(large, 12),
                                                       timeout=300))
        wait_admitted(url, 1)
        small = png_of_side(256)
        queued = [in_background(lambda: httpx.post(f"{url}/segment", files={"file": ("a.png", small)},
                                                   timeout=300)) for _ in range(4)]
        time.sleep(1.0)  # their small bodies are in, and they wait behind the batch
        assert busy.is_alive(), "the batch ended before SIGTERM: make it larger"
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        for thread, _ in queued:
            thread.join(30)
        refused_within = time.monotonic() - t0
        for _, out in queued:
            r = out["result"]
            assert r.status_code == 503 and r.json()["code"] == "shutting_down" and r.headers["retry-after"]
        assert busy.is_alive() or batch["result"].status_code == 200  # refused at once, before the batch ended
        assert refused_within < 30
        busy.join(120)
        assert batch["result"].status_code == 200  # the work in progress was finished and answered
        assert proc.wait(timeout=60) == -signal.SIGTERM  # uvicorn ends by the signal it handled, once drained
    assert "shutting down" in log.read_text()
