"""Durable entity state (``state=``) on memory and SQLite: loaded on activation,
committed with the reply, rolled back with a failed handler, read-only for volatile
RPCs, read without activating (``cluster.state_of``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import covey
from covey.core import (
    ClusterError,
    EntityError,
    MsgpackCodec,
    Reason,
    SerializationError,
    StorageError,
)

from ._state_helpers import Backend, CrashBeforeCommit, LoseCommitOutcome


class CartState(BaseModel):
    items: list[str] = []


class Add(BaseModel):
    id: str
    item: str
    fail: bool = False


RUNS: list[tuple[str, int | None]] = []  # (item, ctx.request_id) per handler run


class Cart(covey.Entity, type="Cart", state=CartState):
    state: CartState

    @covey.rpc(persisted=True, primary_key=lambda c: c.id)
    async def add(self, cmd: Add) -> int:
        RUNS.append((cmd.item, self.ctx.request_id))
        self.state.items.append(cmd.item)
        if cmd.fail:
            raise ValueError("refused after the change")
        return len(self.state.items)

    @covey.rpc
    async def items(self) -> list[str]:
        return list(self.state.items)

    @covey.rpc(persisted=True)
    async def corrupt(self) -> None:
        self.state.items.append(42)  # type: ignore[arg-type]  # no validation on append

    @covey.rpc
    async def sneak(self, item: str) -> None:
        self.state.items.append(item)

    @covey.rpc
    async def request_id(self) -> int | None:
        return self.ctx.request_id

    @covey.rpc
    async def open_transaction(self) -> None:
        await self.ctx.transaction()


class Flaky(covey.Entity, type="Flaky", state=CartState):
    """Its store fails under the first run of each request (say its transaction
    cannot open): that run is no answer, the message runs again."""

    state: CartState

    @covey.rpc(persisted=True, primary_key=lambda c: c.id)
    async def add(self, cmd: Add) -> int:
        RUNS.append((cmd.item, self.ctx.request_id))
        self.state.items.append(cmd.item)
        if sum(1 for item, _ in RUNS if item == cmd.item) == 1:
            raise StorageError("PostgreSQL is unavailable (opening a unit of work)")
        return len(self.state.items)


class Plain(covey.Entity, type="Plain"):
    @covey.rpc
    async def ping(self) -> None:
        return None


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    RUNS.clear()
    return Backend(request.param, tmp_path)


async def test_state_is_committed_and_loaded_again_on_another_runner(backend: Backend) -> None:
    async with backend.cluster(Cart, runners=2) as tc:
        member = tc.client_member
        assert await member.state_of(Cart, "c1") is None  # never committed: nothing stored
        cart = tc.client(Cart, "c1")
        assert await cart.items() == []  # a fresh CartState()
        assert await member.state_of(Cart, "c1") is None  # reading stored nothing
        assert await cart.add(Add(id="1", item="apple")) == 1
        assert await cart.add(Add(id="2", item="pear")) == 2
        assert await member.state_of(Cart, "c1") == CartState(items=["apple", "pear"])
        await tc.kill(tc.owner_index(Cart, "c1"))  # the instance is gone with its runner
        assert await cart.items() == ["apple", "pear"]  # loaded on activation
        assert await cart.add(Add(id="3", item="fig")) == 3


async def test_a_handler_that_raises_keeps_none_of_its_state_change(backend: Backend) -> None:
    async with backend.cluster(Cart, runners=1) as tc:
        cart = tc.client(Cart, "c1")
        await cart.add(Add(id="1", item="apple"))
        with pytest.raises(EntityError) as caught:
            await cart.add(Add(id="2", item="rotten", fail=True))
        assert caught.value.reason is Reason.HANDLER_FAILED
        assert await cart.items() == ["apple"]  # the instance was rolled back
        assert await tc.client_member.state_of(Cart, "c1") == CartState(items=["apple"])
        assert await cart.add(Add(id="3", item="pear")) == 2


async def test_a_state_the_model_refuses_is_never_stored(backend: Backend) -> None:
    async with backend.cluster(Cart, runners=1) as tc:
        cart = tc.client(Cart, "c1")
        await cart.add(Add(id="1", item="apple"))
        with pytest.raises(SerializationError) as caught:
            await cart.corrupt()
        assert caught.value.reason is Reason.PAYLOAD_INVALID
        assert caught.value.details["fields"] == ["items.1"]
        assert await cart.items() == ["apple"]
        assert await tc.client_member.state_of(Cart, "c1") == CartState(items=["apple"])


async def test_a_volatile_rpc_that_changes_the_state_fails_and_is_undone(
        backend: Backend) -> None:
    async with backend.cluster(Cart, runners=1) as tc:
        cart = tc.client(Cart, "c1")
        await cart.add(Add(id="1", item="apple"))
        with pytest.raises(EntityError) as caught:
            await cart.sneak("free lunch")
        assert caught.value.reason is Reason.STATE_READ_ONLY
        assert await cart.items() == ["apple"]
        assert await cart.add(Add(id="2", item="pear")) == 2
        assert await tc.client_member.state_of(Cart, "c1") == CartState(items=["apple", "pear"])


async def test_a_rerun_after_a_crash_before_the_commit_starts_from_the_committed_state(
        backend: Backend) -> None:
    async with backend.cluster(Cart, runners=2) as tc:
        cart = tc.client(Cart, "c1")
        await cart.add(Add(id="1", item="apple"))
        crash = CrashBeforeCommit(tc.storage)
        call = asyncio.create_task(cart.add(Add(id="2", item="pear")))
        await asyncio.wait_for(crash.reached.wait(), 5)  # ran, not committed
        await tc.kill(tc.owner_index(Cart, "c1"))
        assert await asyncio.wait_for(call, 10) == 2  # not 3: the lost run left nothing
        assert [item for item, _ in RUNS] == ["apple", "pear", "pear"]  # at least once
        assert RUNS[1][1] == RUNS[2][1] is not None  # the same request id on both runs
        assert await tc.client_member.state_of(Cart, "c1") == CartState(items=["apple", "pear"])


async def test_after_a_commit_whose_outcome_was_lost_the_state_is_read_again(
        backend: Backend) -> None:
    async with backend.cluster(Cart, runners=1) as tc:
        cart = tc.client(Cart, "c1", timeout=3)
        await cart.add(Add(id="1", item="apple"))
        LoseCommitOutcome(tc.storage)  # committed, but the runner hears "failed" and rolls back
        assert await cart.add(Add(id="2", item="pear")) == 2  # the stored reply
        # the instance went back to ["apple"]; storage has both: it must read them
        assert await cart.add(Add(id="3", item="fig")) == 3
        assert await cart.items() == ["apple", "pear", "fig"]
        assert await tc.client_member.state_of(Cart, "c1") == CartState(
            items=["apple", "pear", "fig"])


async def test_a_storage_failure_under_a_handler_runs_the_message_again(
        backend: Backend) -> None:
    async with backend.cluster(Flaky, runners=1) as tc:
        flaky = tc.client(Flaky, "f1")
        assert await flaky.add(Add(id="1", item="apple")) == 1  # not the failure
        assert [item for item, _ in RUNS] == ["apple", "apple"]
        assert await tc.client_member.state_of(Flaky, "f1") == CartState(items=["apple"])
        assert await tc.storage.messages.list_messages("Flaky", state="error", limit=5) == []


async def test_request_id_and_transaction_exist_in_persisted_handlers_only(
        backend: Backend) -> None:
    async with backend.cluster(Cart, runners=1) as tc:
        cart = tc.client(Cart, "c1")
        await cart.add(Add(id="1", item="apple"))
        assert RUNS[0][1] is not None and RUNS[0][1] > 0
        assert await cart.request_id() is None  # volatile
        with pytest.raises(EntityError) as caught:
            await cart.open_transaction()
        assert caught.value.reason is Reason.INVALID_ARGUMENT
        assert caught.value.details["field"] == "transaction"


class VersionedState(BaseModel):
    covey_version: ClassVar[int] = 2
    lines: list[dict[str, Any]] = []


@covey.upcaster(VersionedState, from_version=1)
def _items_became_lines(data: dict[str, Any]) -> dict[str, Any]:
    return {"lines": [{"sku": item, "qty": 1} for item in data.get("items", [])]}


class Order(covey.Entity, type="Order", state=VersionedState):
    state: VersionedState

    @covey.rpc
    async def lines(self) -> list[dict[str, Any]]:
        return self.state.lines

    @covey.rpc(persisted=True)
    async def touch(self) -> int:
        return len(self.state.lines)


def _snapshot(version: int, data: dict[str, Any]) -> bytes:
    return MsgpackCodec().encode({"v": version, "s": data})


async def test_an_old_snapshot_is_upcast_when_read(backend: Backend) -> None:
    async with backend.cluster(Order, runners=1) as tc:
        await tc.storage.state.set("covey.state/Order/o1", _snapshot(1, {"items": ["a", "b"]}),
                                   expected_version=None)
        expected = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1}]
        assert (await tc.client_member.state_of(Order, "o1")) == VersionedState(lines=expected)
        assert await tc.client(Order, "o1").lines() == expected


async def test_a_snapshot_of_a_newer_version_fails_the_calls_and_stays_untouched(
        backend: Backend) -> None:
    async with backend.cluster(Order, runners=1) as tc:
        key = "covey.state/Order/o1"
        await tc.storage.state.set(key, _snapshot(3, {"future": True}), expected_version=None)
        stored = await tc.storage.state.get(key)
        order = tc.client(Order, "o1")
        for call in (order.touch, order.lines):  # persisted, then volatile
            with pytest.raises(EntityError) as caught:
                await call()
            assert caught.value.reason is Reason.STATE_VERSION_UNKNOWN
        with pytest.raises(EntityError) as read:
            await tc.client_member.state_of(Order, "o1")
        assert read.value.reason is Reason.STATE_VERSION_UNKNOWN
        assert await tc.storage.state.get(key) == stored  # the row stays untouched
        # the other entities of the type are not affected
        assert await tc.client(Order, "o2").touch() == 0


async def test_state_of_refuses_what_has_no_state(backend: Backend) -> None:
    async with backend.cluster(Cart, Plain, runners=1) as tc:
        member = tc.client_member
        for wrong in (Plain, str):
            with pytest.raises(ClusterError) as caught:
                await member.state_of(wrong, "x")  # type: ignore[arg-type]
            assert caught.value.reason is Reason.INVALID_ARGUMENT
            assert caught.value.details["field"] == "entity_type"
        with pytest.raises(ClusterError) as bad_id:
            await member.state_of(Cart, "")
        assert bad_id.value.details["field"] == "entity_id"


def test_state_with_concurrency_or_a_non_model_is_refused_at_declaration() -> None:
    with pytest.raises(ClusterError) as caught:
        class _Busy(covey.Entity, type="Busy", state=CartState, concurrency=2):
            pass
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.details["field"] == "concurrency"
    with pytest.raises(ClusterError) as bad:
        class _Odd(covey.Entity, type="Odd", state=dict):  # type: ignore[arg-type]
            pass
    assert bad.value.details["field"] == "state"

    class _Child(Cart, type="ChildCart"):  # inherits the state model, and its rule
        pass
    assert _Child.__covey_state__ is CartState
