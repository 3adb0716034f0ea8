"""Wait for a persisted call's reply on two paths at once: the push and storage.

A persisted message is stored before it is pushed to its owner, and the owner
finds it on its own storage read even when the push never arrives. So a caller
whose push hangs (the owner is unreachable, a partition blackholes the request)
must not wait on the push alone until its deadline: it also looks in storage,
often at first and then less often, and takes whichever answer comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from covey.core import Clock
from covey.storage import Reply

T = TypeVar("T")

#: the first storage check comes this long after the push started; a push that
#: answers sooner (the usual case) costs no storage read at all
FIRST_CHECK = 0.25


async def push_or_stored(
    push: Coroutine[Any, Any, Reply],
    stored: Callable[[], Awaitable[Reply | None]],
    clock: Clock,
    deadline: float,
    *,
    max_interval: float,
) -> Reply:
    """The reply of ``push``, or the one ``stored()`` finds first.

    Args:
        push: delivers the message and returns its reply; it must end by itself
            at ``deadline`` (it raises the caller's timeout then).
        stored: looks the reply up in storage; ``None`` while there is none.
        clock: the clock that ``deadline`` (``clock.monotonic()``) is on.
        deadline: when the call gives up.
        max_interval: the longest wait between two storage checks (the owners'
            safety poll: a reply cannot show up much faster than that anyway).

    Raises:
        ClusterError: whatever ``push`` raises, when storage has no reply first.
    """
    loop = asyncio.get_running_loop()
    # Scoped to this call, not a background task: awaited here or cancelled before
    # it returns. Its errors are the call's answer, so it stays out of the
    # messenger's task set (where an error would count as a crash).
    pushing = loop.create_task(push)
    # One future per wait, woken by the push finishing or by a clock timer: no
    # sleeping task per call (this runs for every persisted call; the push
    # usually answers in milliseconds and storage is never read then).
    woken: list[asyncio.Future[None]] = []

    def wake() -> None:
        if woken and not woken[-1].done():
            woken[-1].set_result(None)

    pushing.add_done_callback(lambda _: wake())
    interval = FIRST_CHECK
    try:
        while True:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                return await pushing  # it ends at the deadline by itself
            woken.append(loop.create_future())
            timer = clock.call_later(min(interval, remaining), wake)
            try:
                await woken[-1]
            finally:
                timer.cancel()
                woken.clear()
            if pushing.done():
                return pushing.result()
            # a slow storage must not hold back a push that answers meanwhile
            lookup = await _first(pushing, stored())
            if lookup is not None:
                return lookup
            if pushing.done():
                return pushing.result()
            interval = min(interval * 2, max(max_interval, FIRST_CHECK))
    finally:
        if not pushing.done():
            # a push still under way is no longer wanted; it ends quickly once
            # cancelled and its outcome is nobody's business
            pushing.cancel()
            pushing.add_done_callback(_forget)
        else:
            _forget(pushing)  # answered by storage: the push's error is not news


async def _first(pushing: asyncio.Future[Reply], other: Awaitable[T]) -> T | None:
    """Run ``other`` until it or ``pushing`` is done; its result if it finished."""
    task = asyncio.ensure_future(other)  # scoped like ``pushing`` (see above)
    either: set[asyncio.Future[Any]] = {pushing, task}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            task.add_done_callback(_forget)
    return task.result() if task.done() and not task.cancelled() else None


def _forget(task: asyncio.Future[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()
