"""The admission by memory and its load shedding, on their own (the service's behaviour under load is in
tests/api/test_overload.py, against a real server)."""

from __future__ import annotations

import asyncio

import pytest

from app.pipeline.errors import PipelineError
from app.services.admission import FINISHING_BYTES_PER_PIXEL, HELD_BYTES_PER_PIXEL, Admission, Overloaded, WorkEstimate

MPX = 1_000_000


def test_an_estimate_holds_every_image_and_finishes_the_largest():
    estimate = WorkEstimate.of([9 * MPX] * 16)
    assert estimate.images == 16 and estimate.pixels == 144 * MPX and estimate.largest == 9 * MPX
    assert estimate.megabytes == pytest.approx((HELD_BYTES_PER_PIXEL * 144 + FINISHING_BYTES_PER_PIXEL * 9))


def test_a_request_over_the_whole_budget_is_refused_at_once():
    admission = Admission(budget_mb=1000, max_requests=4, max_wait_s=10)
    with pytest.raises(PipelineError) as refused:
        admission.check_fits(WorkEstimate.of([49 * MPX] * 4))
    assert refused.value.code == "too_many_pixels" and "COVIDSEG_WORK_MEMORY_MB" in refused.value.message


async def hold(admission: Admission, estimate: WorkEstimate, entered: list, release: asyncio.Event, name: str):
    async with admission.admitted(estimate):
        entered.append(name)
        await release.wait()


def test_requests_wait_while_the_memory_in_work_would_exceed_the_budget_first_come_first_served():
    async def scenario():
        admission = Admission(budget_mb=1000, max_requests=4, max_wait_s=10)
        big, small = WorkEstimate.of([36 * MPX]), WorkEstimate.of([1 * MPX])  # 936 MB and 26 MB
        entered, release = [], asyncio.Event()
        tasks = [asyncio.create_task(hold(admission, big, entered, release, "big-1"))]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(hold(admission, big, entered, release, "big-2")))
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(hold(admission, small, entered, release, "small")))
        await asyncio.sleep(0.05)
        # the small one would fit beside big-1, but it came after big-2: no overtaking, no starving big requests
        assert entered == ["big-1"] and len(admission.queue) == 2
        release.set()
        await asyncio.gather(*tasks)
        assert entered == ["big-1", "big-2", "small"] and not admission.in_work and not admission.queue
    asyncio.run(scenario())


def test_a_request_that_would_wait_longer_than_the_bound_is_refused_at_once_with_retry_after():
    async def scenario():
        admission = Admission(budget_mb=100, max_requests=1, max_wait_s=2)
        admission.seconds_per_image = 1.0  # as measured on earlier requests
        entered, release = [], asyncio.Event()
        first = asyncio.create_task(hold(admission, WorkEstimate.of([MPX] * 2), entered, release, "first"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(hold(admission, WorkEstimate.of([MPX]), entered, release, "second"))
        await asyncio.sleep(0.01)
        assert admission.expected_wait() == pytest.approx(3.0)  # 2 images in work and 1 queued, 1 s each
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Overloaded) as refused:
            async with admission.admitted(WorkEstimate.of([MPX])):
                pass
        assert loop.time() - t0 < 0.5  # at once, not after its bound
        assert refused.value.code == "overloaded" and refused.value.retry_after == 2
        release.set()
        await asyncio.gather(first, second)
    asyncio.run(scenario())


def test_a_queued_request_is_refused_when_its_wait_reaches_the_bound():
    async def scenario():
        admission = Admission(budget_mb=100, max_requests=1, max_wait_s=0.2)  # no time measured yet
        entered, release = [], asyncio.Event()
        first = asyncio.create_task(hold(admission, WorkEstimate.of([MPX]), entered, release, "first"))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            async with admission.admitted(WorkEstimate.of([MPX])):
                pass
        assert not admission.queue
        release.set()
        await first
    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_next_one_in():
    async def scenario():
        admission = Admission(budget_mb=1000, max_requests=4, max_wait_s=10)
        entered, release, release_last = [], asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(admission, WorkEstimate.of([30 * MPX]), entered, release, "first"))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(hold(admission, WorkEstimate.of([30 * MPX]), entered, release, "gone"))
        await asyncio.sleep(0.01)
        last = asyncio.create_task(hold(admission, WorkEstimate.of([MPX]), entered, release_last, "last"))
        await asyncio.sleep(0.01)
        assert entered == ["first"]
        gone.cancel()  # its client hung up while it waited
        await asyncio.sleep(0.01)
        assert entered == ["first", "last"]  # the small one is no longer held up behind it
        release.set(), release_last.set()
        await asyncio.gather(first, last)
        assert gone.cancelled() and not admission.in_work and not admission.queue
    asyncio.run(scenario())


def test_shutting_down_refuses_the_queued_requests_and_lets_those_in_work_finish():
    async def scenario():
        admission = Admission(budget_mb=100, max_requests=1, max_wait_s=30)
        entered, release = [], asyncio.Event()
        working = asyncio.create_task(hold(admission, WorkEstimate.of([MPX]), entered, release, "working"))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(hold(admission, WorkEstimate.of([MPX]), entered, release, "queued"))
        await asyncio.sleep(0.01)
        admission.close()
        with pytest.raises(Overloaded) as refused:
            await queued
        assert refused.value.code == "shutting_down"
        with pytest.raises(Overloaded):
            async with admission.admitted(WorkEstimate.of([MPX])):
                pass
        release.set()
        await working
        assert entered == ["working"]
    asyncio.run(scenario())


def test_falling_idle_after_large_work_calls_on_idle_once_and_small_work_does_not():
    async def scenario():
        calls = []
        admission = Admission(budget_mb=2000, max_requests=4, max_wait_s=10, on_idle=lambda: calls.append(1))
        async with admission.admitted(WorkEstimate.of([MPX])):  # 26 MB: not worth a trim
            pass
        assert calls == []
        async with admission.admitted(WorkEstimate.of([9 * MPX])):
            async with admission.admitted(WorkEstimate.of([MPX])):
                pass
            assert calls == []  # not idle yet: the large one is still in work
        assert calls == [1]
    asyncio.run(scenario())
