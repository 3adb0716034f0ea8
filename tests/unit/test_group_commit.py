from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from covey.core import StorageError
from covey.storage.runtime import GroupCommit


async def test_concurrent_ops_share_batches() -> None:
    batches: list[list[int]] = []

    async def flush(ops: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(ops))
        await asyncio.sleep(0.001)
        return [op * 2 for op in ops]

    gc: GroupCommit[int, int] = GroupCommit(flush, max_size=50, flushers=1)
    gc.start()
    try:
        results = await asyncio.gather(*(gc.submit(i) for i in range(200)))
    finally:
        await gc.close()
    assert results == [i * 2 for i in range(200)]
    assert len(batches) < 20 and max(len(b) for b in batches) <= 50


async def test_per_op_errors_and_batch_failures_are_isolated() -> None:
    async def flush(ops: Sequence[int]) -> list[int | BaseException]:
        if 13 in ops and len(ops) > 1:
            raise ValueError("a bad op broke the batch")
        if ops == [13]:
            raise ValueError("bad op")
        return [StorageError("odd") if op % 2 else op for op in ops]

    gc: GroupCommit[int, int] = GroupCommit(flush, max_size=100, flushers=1)
    gc.start()
    try:
        results = await asyncio.gather(*(gc.submit(i) for i in range(20)),
                                       return_exceptions=True)
    finally:
        await gc.close()
    assert isinstance(results[13], ValueError)
    assert isinstance(results[3], StorageError)
    assert results[4] == 4


async def test_closed_batcher_refuses_work() -> None:
    async def flush(ops: Sequence[int]) -> list[int | BaseException]:
        return list(ops)

    gc: GroupCommit[int, int] = GroupCommit(flush)
    gc.start()
    await gc.close()
    with pytest.raises(StorageError):
        await gc.submit(1)
