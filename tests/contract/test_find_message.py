"""MessageStorage.find: the stored request of an (address, tag, primary key), on
every backend (workflows find their start and step messages with it)."""

from __future__ import annotations

from typing import Any

import pytest

from covey.core import ClusterError, EntityAddress, Reason
from covey.storage import Duplicate, Fence, Reply, Saved, Storage

from ._helpers import RUNNER_A, S1, S2, msg
from .conftest import MakeStorage


async def test_find_answers_the_request_of_an_address_tag_and_key(storage: Storage) -> None:
    first = msg("e1", tag="start", primary_key="start")
    other = msg("e2", tag="start", primary_key="start")
    assert await storage.messages.save_request(first) == Saved(first.id)
    assert await storage.messages.save_request(other) == Saved(other.id)
    find = storage.messages.find
    assert await find(first.address, "start", "start") == first.id
    assert await find(other.address, "start", "start") == other.id
    # each part of the key counts
    assert await find(first.address, "start", "start-2") is None
    assert await find(first.address, "step", "start") is None
    assert await find(msg("e3").address, "start", "start") is None
    assert await find(msg("e1", entity_type="Other").address, "start", "start") is None


async def test_find_answers_none_for_a_request_without_that_key(storage: Storage) -> None:
    keyless = msg("e1", tag="signal")
    await storage.messages.save_request(keyless)
    assert await storage.messages.find(keyless.address, "signal", "anything") is None
    assert await storage.messages.find(keyless.address, "signal", str(keyless.id)) is None


async def test_find_answers_the_first_request_after_a_duplicate(storage: Storage) -> None:
    first = msg(primary_key="k")
    again = msg(primary_key="k")
    await storage.messages.save_request(first)
    assert await storage.messages.save_request(again) == Duplicate(first.id, None)
    assert await storage.messages.find(first.address, first.tag, "k") == first.id


async def test_find_answers_a_processed_request_until_it_is_deleted(storage: Storage) -> None:
    fence = Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])
    m = msg(primary_key="done-1")
    await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(m.id, b"ok"), fence)
    assert await storage.messages.find(m.address, m.tag, "done-1") == m.id
    assert await storage.messages.delete([m.id]) == 1
    assert await storage.messages.find(m.address, m.tag, "done-1") is None


@pytest.mark.parametrize("key", ["k" * 300, "ключ-🔑", "x" * 4096, "a/b/c"],
                         ids=["hashed", "unicode", "longest", "slashes"])
async def test_find_answers_long_and_unicode_keys(storage: Storage, key: str) -> None:
    m = msg("é" * 200, primary_key=key, tag="t" * 255)
    await storage.messages.save_request(m)
    assert await storage.messages.find(m.address, m.tag, key) == m.id
    assert await storage.messages.find(m.address, m.tag, key[:-1]) is None


async def test_find_answers_a_request_another_instance_stored(
        storage: Storage, make_storage: MakeStorage) -> None:
    m = msg("shared", shard=S2, primary_key="start")
    await storage.messages.save_request(m)
    other = await make_storage()
    assert await other.messages.find(m.address, m.tag, "start") == m.id


GOOD = msg().address
BAD_ARGUMENTS: list[tuple[str, str, Any, Any, Any]] = [
    ("address-str", "address", "Account/e1", "deposit", "k"),
    ("address-none", "address", None, "deposit", "k"),
    ("address-empty-id", "address.entity_id", EntityAddress("Account", "", S1), "deposit", "k"),
    ("tag-empty", "tag", GOOD, "", "k"),
    ("tag-int", "tag", GOOD, 5, "k"),
    ("tag-nul", "tag", GOOD, "a\x00b", "k"),
    ("tag-too-long", "tag", GOOD, "t" * 256, "k"),
    ("key-empty", "primary_key", GOOD, "deposit", ""),
    ("key-int", "primary_key", GOOD, "deposit", 5),
    ("key-bytes", "primary_key", GOOD, "deposit", b"k"),
    ("key-nul", "primary_key", GOOD, "deposit", "a\x00b"),
    ("key-too-long", "primary_key", GOOD, "deposit", "k" * 4097),
    ("key-surrogate", "primary_key", GOOD, "deposit", "\ud800"),
]


@pytest.mark.parametrize(("field", "address", "tag", "key"),
                         [case[1:] for case in BAD_ARGUMENTS],
                         ids=[case[0] for case in BAD_ARGUMENTS])
async def test_find_refuses_bad_arguments(storage: Storage, field: str, address: Any,
                                          tag: Any, key: Any) -> None:
    with pytest.raises(ClusterError) as info:
        await storage.messages.find(address, tag, key)
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert not info.value.retryable
    assert info.value.details.get("field") == field


async def test_find_refuses_a_missing_key(storage: Storage) -> None:
    with pytest.raises(ClusterError) as info:
        await storage.messages.find(GOOD, "deposit", None)  # type: ignore[arg-type]
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details.get("field") == "primary_key"
