"""Work for a client that has hung up is dropped: a request waiting for admission is cancelled the moment its
client disconnects, instead of taking a place in the queue and a model run whose answer nobody reads. Work
already admitted finishes (its thread cannot be stopped: app.services.segmentation), its answer dropped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer: there is no one to answer (counted as 499, not logged as an
    error)."""


async def _until_disconnected(receive: Receive) -> None:
    # The body is in: what the server delivers from now on is the disconnect, when it comes.
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """The result of ``work``, or :class:`ClientGone` as soon as the client disconnects (``work`` cancelled)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # dropped: nobody reads it
                await task
    if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
        raise watcher.exception()  # the receive failed (a body deadline, say): not a disconnect
    if task.cancelled():
        raise ClientGone
    return task.result()
