"""The same failure carries the same ``details`` on every backend.

Not found, already processed, fenced out (a stale epoch, a shard never
acquired, a message of another shard) and version conflicts: the exact keys
and values of ``details`` documented in ``covey.storage._contracts``, and which
refusal wins when several apply — for a unit of work's commit too.
"""

from __future__ import annotations

import pytest

from covey.core import AlreadyProcessed, FencedOut, MessageNotFound, VersionConflict
from covey.storage import Fence, Reply, Storage, UnitOfWork

from ._helpers import RUNNER_A, RUNNER_B, S1, S2, S3, msg, next_id
from .conftest import MakeStorage


async def _fence(storage: Storage, shard: object = S1) -> Fence:
    held = await storage.runners.acquire(RUNNER_A, [shard])  # type: ignore[list-item]
    return Fence(shard, held[shard])  # type: ignore[arg-type, index]


async def _stale(make_storage: MakeStorage) -> tuple[Storage, Fence, int]:
    """A storage, a fence for S1 that is no longer current, and S1's epoch now."""
    one, two = await make_storage(), await make_storage()
    old = await _fence(one)
    await one.runners.release(RUNNER_A, [S1])
    current = (await two.runners.acquire(RUNNER_B, [S1]))[S1]
    return one, old, current


async def test_not_found_names_the_message(storage: Storage) -> None:
    fence = await _fence(storage)
    missing = next_id()
    for call in (lambda: storage.messages.save_reply(Reply(missing, b"r"), fence),
                 lambda: storage.messages.reschedule(missing, deliver_at=0, error="e",
                                                     fence=fence),
                 lambda: storage.messages.reset_request(missing)):
        with pytest.raises(MessageNotFound) as info:
            await call()
        assert info.value.details == {"message_id": missing}


async def test_already_processed_names_the_message(storage: Storage) -> None:
    fence = await _fence(storage)
    m = msg()
    await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(m.id, b"first"), fence)
    for call in (lambda: storage.messages.save_reply(Reply(m.id, b"again"), fence),
                 lambda: storage.messages.reschedule(m.id, deliver_at=0, error="e",
                                                     fence=fence)):
        with pytest.raises(AlreadyProcessed) as info:
            await call()
        assert info.value.details == {"message_id": m.id}


async def test_a_stale_fence_names_both_epochs(make_storage: MakeStorage) -> None:
    storage, old, current = await _stale(make_storage)
    m = msg()
    await storage.messages.save_request(m)
    expected = {"shard": "default:1", "epoch": old.epoch, "current_epoch": current}
    for call in (lambda: storage.messages.save_reply(Reply(m.id, b"r"), old),
                 lambda: storage.messages.reschedule(m.id, deliver_at=0, error="e", fence=old),
                 lambda: storage.state.set("k", b"v", expected_version=None, fence=old)):
        with pytest.raises(FencedOut) as info:
            await call()
        assert info.value.details == expected


@pytest.mark.parametrize("epoch", [0, 1])
async def test_a_fence_of_a_shard_never_acquired_is_stale(storage: Storage, epoch: int) -> None:
    never = Fence(S3, epoch)
    m = msg(shard=S3)
    await storage.messages.save_request(m)
    expected = {"shard": "default:3", "epoch": epoch, "current_epoch": None}
    for call in (lambda: storage.messages.save_reply(Reply(m.id, b"r"), never),
                 lambda: storage.state.set("k", b"v", expected_version=None, fence=never)):
        with pytest.raises(FencedOut) as info:
            await call()
        assert info.value.details == expected
    assert (await storage.messages.inspect([m.id]))[m.id].reply is None
    assert await storage.state.get("k") is None


async def test_a_fence_for_another_shard_names_the_message_and_its_shard(
    storage: Storage,
) -> None:
    fence = await _fence(storage)
    m = msg(shard=S2)
    await storage.messages.save_request(m)
    expected = {"shard": "default:1", "epoch": fence.epoch, "current_epoch": fence.epoch,
                "message_id": m.id, "message_shard": "default:2"}
    for call in (lambda: storage.messages.save_reply(Reply(m.id, b"r"), fence),
                 lambda: storage.messages.reschedule(m.id, deliver_at=0, error="e",
                                                     fence=fence)):
        with pytest.raises(FencedOut) as info:
            await call()
        assert info.value.details == expected
    assert (await storage.messages.inspect([m.id]))[m.id].reply is None


async def test_version_conflicts_name_both_versions(storage: Storage) -> None:
    fence = await _fence(storage)
    assert await storage.state.set("k", b"v", expected_version=None) == 1
    for key, expected, current, with_fence in [("k", None, 1, False), ("k", 7, 1, False),
                                               ("missing", 1, None, False), ("k", 3, 1, True)]:
        with pytest.raises(VersionConflict) as info:
            await storage.state.set(key, b"w", expected_version=expected,
                                    fence=fence if with_fence else None)
        assert info.value.details == {"key": key, "expected_version": expected,
                                      "current_version": current}


async def test_which_refusal_wins(make_storage: MakeStorage) -> None:
    storage, old, current = await _stale(make_storage)
    missing, elsewhere, done = next_id(), msg(shard=S2), msg()
    await storage.messages.save_requests([elsewhere, done])
    await storage.messages.save_reply(Reply(done.id, b"r"), Fence(S1, current))
    # not found before a stale fence
    with pytest.raises(MessageNotFound):
        await storage.messages.save_reply(Reply(missing, b"r"), old)
    # another shard before a stale fence
    with pytest.raises(FencedOut) as info:
        await storage.messages.save_reply(Reply(elsewhere.id, b"r"), old)
    assert info.value.details["message_shard"] == "default:2"
    # a stale fence before already processed
    with pytest.raises(FencedOut) as info:
        await storage.messages.save_reply(Reply(done.id, b"r"), old)
    assert "message_id" not in info.value.details


def _used_unit(storage: Storage, fence: Fence, request_id: int, key: str = "u") -> UnitOfWork:
    """A unit with a staged write: its commit takes the unit's own transaction."""
    unit = storage.messages.unit(fence, request_id)
    unit.put_state(key, b"v", expected_version=None)
    return unit


async def test_a_units_commit_is_refused_with_the_same_details(
    make_storage: MakeStorage,
) -> None:
    storage, old, current = await _stale(make_storage)
    fence = Fence(S1, current)
    missing, elsewhere, done, fresh = next_id(), msg(shard=S2), msg(), msg()
    await storage.messages.save_requests([elsewhere, done, fresh])
    await storage.messages.save_reply(Reply(done.id, b"r"), fence)
    await storage.state.set("taken", b"v", expected_version=None)
    refusals: list[tuple[UnitOfWork, int, type[Exception], dict[str, object]]] = [
        (_used_unit(storage, fence, missing), missing, MessageNotFound,
         {"message_id": missing}),
        (_used_unit(storage, old, fresh.id), fresh.id, FencedOut,
         {"shard": "default:1", "epoch": old.epoch, "current_epoch": current}),
        (_used_unit(storage, fence, elsewhere.id), elsewhere.id, FencedOut,
         {"shard": "default:1", "epoch": current, "current_epoch": current,
          "message_id": elsewhere.id, "message_shard": "default:2"}),
        (_used_unit(storage, fence, done.id), done.id, AlreadyProcessed,
         {"message_id": done.id}),
        (_used_unit(storage, fence, fresh.id, key="taken"), fresh.id, VersionConflict,
         {"key": "taken", "expected_version": None, "current_version": 1}),
    ]
    for unit, request_id, error, details in refusals:
        with pytest.raises(error) as info:
            await unit.commit(Reply(request_id, b"r"))
        assert info.value.details == details  # type: ignore[attr-defined]
    # a stale fence wins over a version conflict, as over an already processed message
    both = _used_unit(storage, old, fresh.id, key="taken")
    with pytest.raises(FencedOut):
        await both.commit(Reply(fresh.id, b"r"))
    assert await storage.state.get("u") is None
