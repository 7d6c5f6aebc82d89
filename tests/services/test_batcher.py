"""Micro-batching of concurrent requests: each answer is what the request would get alone."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import anyio
import numpy as np
import pytest
from PIL import Image

from app.pipeline.infer import ModelOutputs
from app.services.batcher import MicroBatcher
from tests.conftest import fixture_images, make_client

IMAGES = fixture_images("Val", "COVID-19") + fixture_images("Val", "Normal") + fixture_images("Train", "COVID-19")


def recording(sizes: list[int]):
    def predict(batch: np.ndarray) -> ModelOutputs:
        sizes.append(len(batch))
        # row by row: each row's answer (and score) depends on that row only
        return ModelOutputs(batch * 2, {"feature_distance": batch.sum(axis=1)})
    return predict


async def submit_all(batcher: MicroBatcher, batches: list[np.ndarray]) -> list[np.ndarray]:
    return await asyncio.gather(*(batcher.run(b) for b in batches))


def batches_of(sizes: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]


@pytest.mark.parametrize("wait", [0.0, 0.05])
def test_each_request_gets_its_own_rows_and_runs_stay_within_the_maximum(wait):
    runs: list[int] = []
    limiter = anyio.CapacityLimiter(1)
    batcher = MicroBatcher(recording(runs), max_batch=4, max_wait=wait, limiter=lambda: limiter)
    batches = batches_of([1, 2, 1, 3, 1, 1, 6])
    answers = asyncio.run(submit_all(batcher, batches))
    for batch, answer in zip(batches, answers):
        np.testing.assert_array_equal(answer.probabilities, batch * 2)
        np.testing.assert_array_equal(answer.scores["feature_distance"], batch.sum(axis=1))
    assert max(runs) <= 4 and sum(runs) == 15
    if wait == 0:
        assert runs == [1, 2, 1, 3, 1, 1, 4, 2]  # every request alone (the 6 in runs of at most 4)
    else:
        assert len(runs) < 7  # requests shared runs


def test_a_failing_run_fails_its_requests_and_the_next_ones_still_run():
    calls = []

    def predict(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return ModelOutputs(batch)

    limiter = anyio.CapacityLimiter(1)
    batcher = MicroBatcher(predict, max_batch=8, max_wait=0.02, limiter=lambda: limiter)

    async def scenario():
        first = await asyncio.gather(*(batcher.run(b) for b in batches_of([1, 1])), return_exceptions=True)
        second = await batcher.run(batches_of([2])[0])
        return first, second

    first, second = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in first) and second.probabilities.shape == (2, 3)


def test_concurrent_requests_through_the_app_get_their_solo_answers():
    thresholds = [0.5, 0.3, 0.7, 0.4, 0.5, 0.25]
    work = [(IMAGES[i % len(IMAGES)], thresholds[i % len(thresholds)]) for i in range(12)]
    bad = b"\x89PNG\r\n\x1a\n" + b"\x00" * 50  # a corrupt file among them

    def ask(client, item):
        data, th = item if isinstance(item, tuple) else (item, 0.5)
        body = data if isinstance(data, bytes) else data.read_bytes()
        r = client.post(f"/segment?format=png&threshold={th}", files={"file": ("x.png", body, "image/png")})
        return r.status_code, r.content

    with make_client(microbatch_wait_ms=0) as alone:
        solo = [ask(alone, item) for item in work]
    with make_client(microbatch_wait_ms=100, microbatch_max_batch=4) as batched:
        service = batched.app.state.service
        runs: list[int] = []
        original = service.model.run
        service.model.run = lambda batch: (runs.append(len(batch)), original(batch))[1]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda item: ask(batched, item), [*work, (bad, 0.5)]))
        metrics = batched.get("/metrics").text
    assert together[:-1] == solo  # the same mask bytes, request by request
    assert 400 <= together[-1][0] < 500  # the bad file fails alone
    assert max(runs) <= 4 and len(runs) < len(work)  # shared runs, none over the maximum
    assert "covidseg_inference_queue_wait_seconds_count" in metrics
    assert np.asarray(Image.open(io.BytesIO(solo[0][1]))).any()
