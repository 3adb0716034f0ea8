"""StateStore: versioned compare-and-set, with and without a fence."""

from __future__ import annotations

import asyncio

import pytest

from covey.core import FencedOut, Reason, VersionConflict
from covey.storage import Fence, Storage, Versioned

from ._helpers import RUNNER_A, RUNNER_B, S1
from .conftest import MakeStorage


async def test_create_read_update_delete(storage: Storage) -> None:
    assert await storage.state.get("singleton/reconciler") is None
    assert await storage.state.set("singleton/reconciler", b"v1", expected_version=None) == 1
    assert await storage.state.get("singleton/reconciler") == Versioned(b"v1", 1)
    assert await storage.state.set("singleton/reconciler", b"v2", expected_version=1) == 2
    assert await storage.state.delete("singleton/reconciler", expected_version=1) is False
    assert await storage.state.delete("singleton/reconciler", expected_version=2) is True
    assert await storage.state.get("singleton/reconciler") is None
    assert await storage.state.delete("singleton/reconciler") is False


async def test_version_conflicts_change_nothing(storage: Storage) -> None:
    await storage.state.set("k", b"one", expected_version=None)
    with pytest.raises(VersionConflict) as info:
        await storage.state.set("k", b"two", expected_version=None)
    assert info.value.reason is Reason.VERSION_CONFLICT and info.value.retryable
    with pytest.raises(VersionConflict):
        await storage.state.set("k", b"two", expected_version=7)
    assert await storage.state.get("k") == Versioned(b"one", 1)


async def test_concurrent_compare_and_set_has_one_winner(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    await one.state.set("counter", b"0", expected_version=None)
    results = await asyncio.gather(
        *((one if i % 2 else two).state.set("counter", str(i).encode(), expected_version=1)
          for i in range(10)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if r == 2) == 1
    assert sum(1 for r in results if isinstance(r, VersionConflict)) == 9


async def test_fenced_write(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    old = Fence(S1, (await one.runners.acquire(RUNNER_A, [S1]))[S1])
    assert await one.state.set("s", b"a", expected_version=None, fence=old) == 1
    await one.runners.release(RUNNER_A, [S1])
    new = Fence(S1, (await two.runners.acquire(RUNNER_B, [S1]))[S1])
    with pytest.raises(FencedOut):
        await one.state.set("s", b"stale", expected_version=1, fence=old)
    assert await two.state.set("s", b"b", expected_version=1, fence=new) == 2
    assert await one.state.get("s") == Versioned(b"b", 2)
