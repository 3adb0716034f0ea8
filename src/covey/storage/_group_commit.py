"""Group commit: writes that arrive together share one transaction.

Callers ``await batcher.submit(op)``; flusher tasks take what has queued (up to
``max_size`` ops, waiting at most ``max_wait`` for more) and hand the batch to the
backend's ``flush`` function, which runs it in one transaction and returns one
outcome per op: a result, or an exception for that op alone. While one flush is in
flight the next batch gathers, so under load batches grow by themselves and
latency at low load stays one transaction.

If ``flush`` raises, the batch is split and each op is flushed on its own, so one
bad op fails alone and the others still commit. A connection-level failure fails
every op of the batch with that error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from covey.core import StorageError

Op = TypeVar("Op")
Result = TypeVar("Result")

FlushFn = Callable[[Sequence[Op]], Awaitable[Sequence["Result | BaseException"]]]


class GroupCommit(Generic[Op, Result]):
    """Batches concurrent writes into shared transactions.

    Args:
        flush: runs one batch in one transaction; one outcome per op, in order.
        max_size: the most ops in one batch.
        max_wait: seconds a flusher waits for more ops before flushing a batch
            smaller than ``max_size`` (0: flush at once).
        flushers: how many batches may be in flight at once.
        is_fatal: tells a whole-batch failure that would fail each op too (a lost
            connection) from one caused by a single op; fatal ones are not split.
    """

    def __init__(
        self,
        flush: Callable[[Sequence[Op]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_size: int = 512,
        max_wait: float = 0.0,
        flushers: int = 2,
        is_fatal: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self._flush = flush
        self._max_size = max_size
        self._max_wait = max_wait
        self._flushers = flushers
        self._is_fatal = is_fatal
        self._queue: collections.deque[tuple[Op, asyncio.Future[Result]]] = collections.deque()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        """Start the flusher tasks (owned and stopped by :meth:`close`)."""
        for _ in range(self._flushers):
            self._tasks.append(asyncio.create_task(self._run(), name="covey-group-commit"))

    async def close(self) -> None:
        """Flush what is queued, then stop the flushers."""
        self._closed = True
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks)
        self._tasks.clear()
        while self._queue:  # flushers are gone: nothing may wait forever
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(StorageError("storage closed before the write was flushed"))

    async def submit(self, op: Op) -> Result:
        """Queue ``op`` and wait for its outcome."""
        if self._closed:
            raise StorageError("storage is closed")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._ready.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._max_wait > 0 and len(self._queue) < self._max_size and not self._closed:
                await asyncio.sleep(self._max_wait)
            batch = [self._queue.popleft() for _ in range(min(self._max_size, len(self._queue)))]
            # A caller cancelled before its op was taken is not waiting: its op is
            # not written (once taken, an op is written whatever its caller does).
            batch = [item for item in batch if not item[1].done()]
            if batch:
                await self._flush_batch(batch)

    async def _flush_batch(self, batch: list[tuple[Op, asyncio.Future[Result]]]) -> None:
        ops = [op for op, _ in batch]
        try:
            outcomes = await self._flush(ops)
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageError("storage closed during the write"))
            raise
        except Exception as exc:
            if len(batch) == 1 or self._is_fatal(exc):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for item in batch:  # isolate the op that broke the batch
                await self._flush_batch([item])
            return
        self.batches += 1
        self.ops += len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
