"""Micro-batching: model runs of concurrent requests gathered into one.

A request's images wait at most ``max_wait`` seconds for others to join, up to ``max_batch``
images per run; each request gets back exactly the rows of its own images. With ``max_wait``
at 0 every request runs alone, as without a batcher. Worth it where one run of many images
costs little more than one of a few (a GPU); on this project's CPU it was measured not to be
(bench/RESULTS.md), so it is off there by default.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import numpy as np

from app.pipeline.infer import ModelOutputs


def run_in_chunks(predict: Callable[[np.ndarray], ModelOutputs], batch: np.ndarray, max_batch: int) -> ModelOutputs:
    """``predict`` over ``batch`` in runs of at most ``max_batch`` images (the largest run bounds memory)."""
    if len(batch) <= max_batch:  # one run: its output as it is, not a copy
        return predict(batch)
    return ModelOutputs.concat([predict(batch[i:i + max_batch]) for i in range(0, len(batch), max_batch)])


@dataclass
class _Waiting:
    batch: np.ndarray
    future: asyncio.Future
    since: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, predict: Callable[[np.ndarray], ModelOutputs], max_batch: int, max_wait: float,
                 limiter: Callable[[], anyio.CapacityLimiter],
                 on_run: Callable[[int, float], None] | None = None,
                 on_wait: Callable[[float], None] | None = None):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait
        self.limiter, self.on_run, self.on_wait = limiter, on_run, on_wait
        self.waiting: list[_Waiting] = []
        self.arrived: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    async def run(self, batch: np.ndarray) -> ModelOutputs:
        """The model's outputs for ``batch``, run alone or with other requests' images."""
        if self.max_wait <= 0 or len(batch) >= self.max_batch:
            return await self._run_in_chunks(batch)
        item = _Waiting(batch, asyncio.get_running_loop().create_future())
        self.waiting.append(item)
        self._start()
        self.arrived.set()
        return await item.future

    def _start(self) -> None:
        if self.worker is None or self.worker.done():  # created lazily, inside the running event loop
            self.arrived = asyncio.Event()
            self.worker = asyncio.get_running_loop().create_task(self._gather_and_run())

    async def _run_in_chunks(self, batch: np.ndarray) -> ModelOutputs:
        """A request larger than a run: its own runs of at most ``max_batch`` images."""
        if len(batch) <= self.max_batch:  # one run: its output as it is, not a copy
            return await self._infer(batch)
        return ModelOutputs.concat([await self._infer(batch[i:i + self.max_batch])
                                    for i in range(0, len(batch), self.max_batch)])

    async def _infer(self, batch: np.ndarray) -> ModelOutputs:
        t0 = time.perf_counter()
        outputs = await anyio.to_thread.run_sync(self.predict, batch, limiter=self.limiter())
        if self.on_run is not None:
            self.on_run(len(batch), time.perf_counter() - t0)
        return outputs

    async def _gather_and_run(self) -> None:
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            while self.waiting:
                await self._wait_for_company()
                await self._run_group(self._take_group())

    async def _wait_for_company(self) -> None:
        """Until the batch is full or the oldest waiting request has waited ``max_wait``."""
        deadline = self.waiting[0].since + self.max_wait
        while sum(len(w.batch) for w in self.waiting) < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take_group(self) -> list[_Waiting]:
        group, images = [], 0
        while self.waiting and images + len(self.waiting[0].batch) <= self.max_batch:
            item = self.waiting.pop(0)
            group.append(item)
            images += len(item.batch)
        return group

    async def _run_group(self, group: list[_Waiting]) -> None:
        now = time.perf_counter()
        if self.on_wait is not None:
            for item in group:
                self.on_wait(now - item.since)
        try:
            outputs = await self._infer(np.concatenate([item.batch for item in group]))
        except Exception as exc:  # noqa: BLE001 - handed to every request of the run
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in group:
            if not item.future.done():  # a client that went away has cancelled its future
                item.future.set_result(outputs[start:start + len(item.batch)])
            start += len(item.batch)
