"""The segmentation service bounds how many requests work on full-size images at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

# the engine's decode step decodes for the service
from app.engine import engine as segmentation
from tests.conftest import fixture_images, make_client

COVID = fixture_images("Val", "COVID-19")[0]


@pytest.mark.parametrize("limit", [1, 3])
def test_full_size_work_waits_for_a_free_slot(monkeypatch, limit):
    lock, state = threading.Lock(), {"active": 0, "peak": 0}
    real_decode = segmentation.decode_parsed

    def slow_decode(*args):  # the real decode, held long enough for requests to overlap
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        try:
            time.sleep(0.3)
            return real_decode(*args)
        finally:
            with lock:
                state["active"] -= 1

    monkeypatch.setattr(segmentation, "decode_parsed", slow_decode)
    data = COVID.read_bytes()
    with make_client(image_concurrency=limit) as client, ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: client.post("/segment", files={"file": ("a.png", data)}).status_code,
                              range(6)))
    assert codes == [200] * 6
    assert state["peak"] == limit  # never more than the limit, and the limit is used
