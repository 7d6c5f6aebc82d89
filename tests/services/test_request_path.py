"""The request path without micro-batching (the CPU default): one hand-off to a worker thread per
request, model runs bounded by ``inference_concurrency`` and split at ``microbatch_max_batch``."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
import pytest

from tests.conftest import fixture_images, make_client

COVID = fixture_images("Val", "COVID-19")


def test_a_request_hands_off_to_a_worker_thread_once(monkeypatch):
    """Each hand-off costs two thread wake-ups; per step (and per plain-function dependency) they were
    most of a small request's overhead on a busy 2-core machine (bench/RESULTS.md, service overhead)."""
    real, calls = anyio.to_thread.run_sync, []

    async def counting(fn, *args, **kwargs):
        calls.append(getattr(fn, "__qualname__", repr(fn)))
        return await real(fn, *args, **kwargs)

    with make_client(microbatch_wait_ms=0) as client:
        assert client.post("/segment", files={"file": ("a.png", COVID[0].read_bytes())}).status_code == 200
        monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
        for query in ("", "?format=png&output=overlay", "?tta=flip"):
            calls.clear()
            r = client.post(f"/segment{query}", files={"file": ("a.png", COVID[0].read_bytes())})
            assert r.status_code == 200 and len(calls) == 1, (query, calls)


@pytest.mark.parametrize("slots", [1, 2])
def test_model_runs_at_once_are_bounded_by_inference_concurrency(slots):
    lock, state = threading.Lock(), {"active": 0, "peak": 0}
    with make_client(microbatch_wait_ms=0, inference_concurrency=slots, image_concurrency=6) as client:
        model = client.app.state.service.model
        real = model.run

        def slow_predict(batch):  # the real run, held long enough for requests to overlap
            with lock:
                state["active"] += 1
                state["peak"] = max(state["peak"], state["active"])
            try:
                time.sleep(0.2)
                return real(batch)
            finally:
                with lock:
                    state["active"] -= 1

        model.run = slow_predict
        data = COVID[0].read_bytes()
        with ThreadPoolExecutor(5) as pool:
            codes = list(pool.map(lambda _: client.post("/segment", files={"file": ("a.png", data)}).status_code,
                                  range(5)))
    assert codes == [200] * 5
    assert state["peak"] == slots  # never more than the slots, and the slots are used


def test_a_batch_larger_than_a_run_is_run_in_parts_with_the_same_answers():
    files = [("files", (f"{i}.png", COVID[i % len(COVID)].read_bytes(), "image/png")) for i in range(3)]
    with make_client(microbatch_wait_ms=0) as whole:
        expected = whole.post("/segment/batch", files=files).json()["results"]
    with make_client(microbatch_wait_ms=0, microbatch_max_batch=2) as parts:
        model, runs = parts.app.state.service.model, []
        real = model.run
        model.run = lambda batch: runs.append(len(batch)) or real(batch)
        results = parts.post("/segment/batch", files=files).json()["results"]
        metrics = parts.get("/metrics").text
    assert runs == [2, 1] and results == expected
    assert "covidseg_images_total 3.0" in metrics and "covidseg_inference_batch_size_count 2.0" in metrics
