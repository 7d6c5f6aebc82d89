"""Admission of requests to full-size work: by the memory their images will hold, not by their number, and
refused at once (503 with Retry-After) when they would wait longer than a bound.

A request's memory is estimated from its images' pixel counts before any is decoded (:class:`WorkEstimate`);
requests are admitted first come, first served while the estimates of those in work fit the budget. A request
that would queue is refused when the expected wait (images ahead x the measured time per image) is over the
bound, and a queued one that is still waiting at the bound is refused then: a client is told to come back
instead of holding a connection for minutes. A queued request whose client hangs up is cancelled in the queue
(the route's watcher), so no work is done for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from app.pipeline.errors import PipelineError, Problem

#: Bytes held per pixel of every image of a request while it is worked on (the decoded image, its float copy for
#: the model's input and the full-size masks kept until the answer), and per pixel of its largest image while
#: that one is finished (probability maps at full size, PNG or DICOM encoding). Fitted on ``python -m
#: bench.memory`` (bench/RESULTS.md, memory: the estimate column is at least every measured increase).
HELD_BYTES_PER_PIXEL = 8
FINISHING_BYTES_PER_PIXEL = 18
#: The weight of a new measurement in the time per image (an exponential moving average).
SMOOTHING = 0.2
#: Work this large (estimated MB) since the service was last idle calls ``on_idle`` when it is idle again; small
#: requests do not (a trim would make the next one fault its pages in again for nothing).
IDLE_CALL_AFTER_MB = 64.0


@dataclass(frozen=True)
class WorkEstimate:
    """What a request's images will hold in memory, from their sizes as their headers declare them."""

    images: int
    pixels: int  # all images together
    largest: int  # the largest image's pixels

    @classmethod
    def of(cls, sizes: Iterable[int]) -> WorkEstimate:
        sizes = list(sizes)
        return cls(len(sizes), sum(sizes), max(sizes, default=0))

    @property
    def megabytes(self) -> float:
        return (HELD_BYTES_PER_PIXEL * self.pixels + FINISHING_BYTES_PER_PIXEL * self.largest) / 1e6


class Overloaded(Exception):
    """Answered 503 with ``Retry-After``: the request would wait too long for the work ahead of it, or the service
    is shutting down. Not the input's fault, so not a :class:`PipelineError`."""

    def __init__(self, code: str, message: str, retry_after: float):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, max(1, math.ceil(retry_after))


def _shutting_down() -> Overloaded:
    return Overloaded("shutting_down", "the service is shutting down; retry on another replica or later", 5)


@dataclass
class _Ticket:
    estimate: WorkEstimate
    admitted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    """First come, first served admission of requests within ``budget_mb`` of estimated memory and
    ``max_requests`` at once; a wait longer than ``max_wait_s`` is refused (at once when foreseen)."""

    def __init__(self, budget_mb: float, max_requests: int, max_wait_s: float,
                 on_idle: Callable[[], None] | None = None, on_wait: Callable[[float], None] | None = None):
        self.budget_mb, self.max_requests, self.max_wait_s = budget_mb, max_requests, max_wait_s
        self.on_wait = on_wait  # told each admitted request's wait, seconds
        self.on_idle = on_idle  # called when the service falls idle after large work
        self.largest_since_idle = 0.0
        self.in_work: list[WorkEstimate] = []
        self.queue: deque[_Ticket] = deque()
        self.seconds_per_image = 0.0  # measured throughput (0 until the first request is done)
        self.last_done = 0.0
        self.closed = False  # shutting down: nothing more is admitted

    def check_fits(self, estimate: WorkEstimate) -> None:
        """A request larger than the whole budget could never be admitted: 413 at once."""
        if estimate.megabytes > self.budget_mb:
            raise PipelineError(Problem.TOO_LARGE, "too_many_pixels",
                                f"the request's {estimate.images} image(s) of {estimate.pixels} pixels in all need "
                                f"about {estimate.megabytes:.0f} MB to work on, over the service's "
                                f"{self.budget_mb:.0f} MB (COVIDSEG_WORK_MEMORY_MB): send fewer or smaller images "
                                "per request")

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait: the images in work and queued, at the measured pace."""
        images = sum(e.images for e in self.in_work) + sum(t.estimate.images for t in self.queue)
        return images * self.seconds_per_image

    def refusal_now(self) -> Overloaded | None:
        """The refusal a request arriving now would get whatever its size (shutting down, or a queue already
        longer than the bound), so that it can be answered before its body is read; None when it may queue."""
        if self.closed:
            return _shutting_down()
        wait = self.expected_wait()
        return self._overloaded(wait) if self.queue and wait > self.max_wait_s else None

    @contextlib.asynccontextmanager
    async def admitted(self, estimate: WorkEstimate) -> AsyncIterator[None]:
        """The block runs once ``estimate`` is admitted; :class:`Overloaded` when it would wait too long."""
        self.check_fits(estimate)
        arrived = time.perf_counter()
        await self._enter(estimate)
        start = time.perf_counter()
        if self.on_wait is not None:
            self.on_wait(start - arrived)
        try:
            yield
        except BaseException:  # refused after decoding, or cancelled: no measure of the pace of work
            self._leave(estimate, None)
            raise
        self._leave(estimate, start)

    async def _enter(self, estimate: WorkEstimate) -> None:
        if self.closed:
            raise _shutting_down()
        if not self.queue and self._fits(estimate):
            self.in_work.append(estimate)
            return
        wait = self.expected_wait()
        if wait > self.max_wait_s:
            raise self._overloaded(wait)
        ticket = _Ticket(estimate)
        self.queue.append(ticket)
        try:
            await asyncio.wait_for(asyncio.shield(ticket.admitted), self.max_wait_s)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # cancelled as it was admitted: wait_for kept the result
                raise asyncio.CancelledError
        except BaseException as exc:  # timed out, or cancelled (the client left, or shutdown)
            self._give_up(ticket)
            if isinstance(exc, TimeoutError):
                raise self._overloaded(self.max_wait_s) from None
            raise
        refusal = ticket.admitted.result()
        if refusal is not None:  # refused while queued (shutdown)
            raise refusal

    def _give_up(self, ticket: _Ticket) -> None:
        """A queued request that stops waiting: out of the queue, or out of the work it was just admitted to."""
        if not ticket.admitted.done():
            self.queue.remove(ticket)
            ticket.admitted.cancel()
        elif ticket.admitted.result() is None:  # admitted at the moment it gave up
            self.in_work.remove(ticket.estimate)
        self._admit_waiting()  # it may have held up smaller requests behind it

    def _overloaded(self, wait: float) -> Overloaded:
        return Overloaded("overloaded", f"the service is busy: a request would wait about {wait:.0f} s, over its "
                                        f"bound of {self.max_wait_s:g} s (COVIDSEG_MAX_QUEUE_WAIT_S); retry later",
                          min(wait, self.max_wait_s))

    def _fits(self, estimate: WorkEstimate) -> bool:
        used = sum(e.megabytes for e in self.in_work)
        return len(self.in_work) < self.max_requests and used + estimate.megabytes <= self.budget_mb

    def _leave(self, estimate: WorkEstimate, start: float | None) -> None:
        """Out of work; ``start``: when it was admitted, for a request that completed (None: it did not, and its
        time says nothing of the pace of work)."""
        self.in_work.remove(estimate)
        if start is not None:
            self._measure(estimate.images, start)
        self._admit_waiting()
        self.largest_since_idle = max(self.largest_since_idle, estimate.megabytes)
        if not self.in_work and self.largest_since_idle >= IDLE_CALL_AFTER_MB:
            self.largest_since_idle = 0.0
            if self.on_idle is not None:
                self.on_idle()

    def _measure(self, images: int, start: float) -> None:
        """The time per image: between completions while busy (the throughput), else the request's own time."""
        now = time.perf_counter()
        busy_since = max(self.last_done, start) if self.last_done else start
        sample = (now - busy_since) / max(images, 1)
        self.seconds_per_image = sample if not self.seconds_per_image else (
            (1 - SMOOTHING) * self.seconds_per_image + SMOOTHING * sample)
        self.last_done = now if (self.in_work or self.queue) else 0.0

    def _admit_waiting(self) -> None:
        while self.queue and self._fits(self.queue[0].estimate):
            ticket = self.queue.popleft()
            self.in_work.append(ticket.estimate)
            ticket.admitted.set_result(None)

    def close(self) -> None:
        """Shutting down: the queued requests are refused now (they would not be done within the drain time),
        new ones at once; those in work finish."""
        self.closed = True
        while self.queue:
            ticket = self.queue.popleft()
            if not ticket.admitted.done():
                ticket.admitted.set_result(_shutting_down())
