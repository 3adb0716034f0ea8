"""UnitOfWork: a handler's state, its own writes, its outgoing messages and its reply
commit in one fenced transaction, or none of them does — on every backend."""

from __future__ import annotations

import asyncio

import pytest

from covey.core import (
    AlreadyProcessed,
    ClusterError,
    EntityError,
    FencedOut,
    Reason,
    VersionConflict,
)
from covey.storage import Duplicate, Reply, Storage, Versioned

from ._helpers import RUNNER_A, RUNNER_B, S1, S2, msg
from ._units import AppTable, owned, stored, stored_unit
from .conftest import MakeStorage, Namespace


@pytest.fixture
async def app(namespace: Namespace, storage: Storage) -> AppTable:
    table = AppTable(namespace, storage)
    await table.create()
    return table


async def test_commit_writes_state_app_rows_outgoing_messages_and_reply_together(
    storage: Storage, app: AppTable,
) -> None:
    fence = await owned(storage)
    request, out = msg("cart-1"), msg("sku-9", shard=S2, entity_type="Inventory")
    await storage.messages.save_request(request)
    await storage.state.set("Cart/cart-1", b"v1", expected_version=None)
    unit = storage.messages.unit(fence, request.id)
    assert not unit.used
    unit.put_state("Cart/cart-1", b"v2", expected_version=1)
    await app.insert(unit, "cart-1", "apple")
    unit.send([out])
    assert unit.used and unit.sent == [out]
    # nothing is visible before the commit
    assert await stored(storage, app, "Cart/cart-1", [request.id, out.id]) == (
        Versioned(b"v1", 1), [], {request.id: (None, request.payload)})

    await unit.commit(Reply(request.id, b"ok"))
    assert await stored(storage, app, "Cart/cart-1", [request.id, out.id]) == (
        Versioned(b"v2", 2), [("cart-1", "apple")],
        {request.id: (Reply(request.id, b"ok"), request.payload), out.id: (None, out.payload)})
    # the outgoing message is an ordinary stored request: its owner reads it
    assert [m.id for m in await storage.messages.unprocessed([S2], limit=10)] == [out.id]


async def test_a_unit_that_only_stages_state_and_messages_commits_too(
    storage: Storage,
) -> None:
    fence = await owned(storage)
    request, out = msg(), msg("e2", shard=S2)
    await storage.messages.save_request(request)
    unit = storage.messages.unit(fence, request.id)
    unit.put_state("k", b"new", expected_version=None)
    unit.send([out])
    await unit.commit(Reply(request.id, b"r"))
    assert await storage.state.get("k") == Versioned(b"new", 1)
    assert await storage.messages.replies_for([request.id]) == {request.id: Reply(request.id, b"r")}
    assert await storage.messages.get(out.id) is not None


async def _staged_unit(storage: Storage, app: AppTable, fence: object,
                       request_id: int, out_id: int) -> object:
    unit = storage.messages.unit(fence, request_id)  # type: ignore[arg-type]
    unit.put_state("k", b"mine", expected_version=1)
    await app.insert(unit, "e1", "effect")
    unit.send([msg("e2", shard=S2, id=out_id)])
    return unit


async def test_a_stale_epoch_is_fenced_out_and_writes_nothing(
    make_storage: MakeStorage, namespace: Namespace,
) -> None:
    one, two = await make_storage(), await make_storage()
    app = AppTable(namespace, one)
    await app.create()
    old = await owned(one)
    request, out_id = msg(), msg().id
    await one.messages.save_request(request)
    await one.state.set("k", b"v", expected_version=None)
    unit = await _staged_unit(one, app, old, request.id, out_id)
    await one.runners.release(RUNNER_A, [S1])
    current = (await two.runners.acquire(RUNNER_B, [S1]))[S1]  # a new owner took S1

    with pytest.raises(FencedOut) as info:
        await unit.commit(Reply(request.id, b"late"))  # type: ignore[attr-defined]
    assert info.value.details == {"shard": "default:1", "epoch": old.epoch,
                                  "current_epoch": current}
    assert await stored(one, app, "k", [request.id, out_id]) == (
        Versioned(b"v", 1), [], {request.id: (None, request.payload)})


async def test_a_version_conflict_writes_nothing(storage: Storage, app: AppTable) -> None:
    fence = await owned(storage)
    request, out_id = msg(), msg().id
    await storage.messages.save_request(request)
    await storage.state.set("k", b"v", expected_version=None)
    await storage.state.set("k", b"moved on", expected_version=1)
    unit = await _staged_unit(storage, app, fence, request.id, out_id)
    with pytest.raises(VersionConflict) as info:
        await unit.commit(Reply(request.id, b"r"))  # type: ignore[attr-defined]
    assert info.value.details == {"key": "k", "expected_version": 1, "current_version": 2}
    assert await stored(storage, app, "k", [request.id, out_id]) == (
        Versioned(b"moved on", 2), [], {request.id: (None, request.payload)})


async def test_an_already_processed_message_writes_nothing(
    storage: Storage, app: AppTable,
) -> None:
    fence = await owned(storage)
    request, out_id = msg(), msg().id
    await storage.messages.save_request(request)
    await storage.state.set("k", b"v", expected_version=None)
    unit = await _staged_unit(storage, app, fence, request.id, out_id)
    await storage.messages.save_reply(Reply(request.id, b"first"), fence)  # a re-run won
    with pytest.raises(AlreadyProcessed) as info:
        await unit.commit(Reply(request.id, b"second"))  # type: ignore[attr-defined]
    assert info.value.details == {"message_id": request.id}
    assert await stored(storage, app, "k", [request.id, out_id]) == (
        Versioned(b"v", 1), [], {request.id: (Reply(request.id, b"first"), request.payload)})


async def test_discard_leaves_nothing_and_the_message_can_run_again(
    storage: Storage, app: AppTable,
) -> None:
    fence = await owned(storage)
    request, out_id = msg(), msg().id
    await storage.messages.save_request(request)
    await storage.state.set("k", b"v", expected_version=None)
    unit = await _staged_unit(storage, app, fence, request.id, out_id)
    await unit.discard()  # type: ignore[attr-defined]
    assert await stored(storage, app, "k", [request.id, out_id]) == (
        Versioned(b"v", 1), [], {request.id: (None, request.payload)})
    # the re-run commits once
    again = await _staged_unit(storage, app, fence, request.id, out_id)
    await again.commit(Reply(request.id, b"r"))  # type: ignore[attr-defined]
    assert (await storage.state.get("k"), await app.rows()) == (
        Versioned(b"mine", 2), [("e1", "effect")])


async def test_an_application_write_that_fails_is_the_handlers_error(
    storage: Storage, app: AppTable,
) -> None:
    fence = await owned(storage)
    request, out = msg(), msg("e2", shard=S2)
    await storage.messages.save_request(request)
    unit = storage.messages.unit(fence, request.id)
    unit.put_state("k", b"v", expected_version=None)
    if app.backend != "memory":  # memory: a callable before the failing one has run
        await app.insert(unit, "e1", "rolled back")
    await app.insert_failing(unit)
    unit.send([out])
    with pytest.raises(EntityError) as info:
        await unit.commit(Reply(request.id, b"r"))
    assert info.value.reason is Reason.HANDLER_FAILED
    assert set(info.value.details) == {"sql", "error"}
    assert await stored(storage, app, "k", [request.id, out.id]) == (
        None, [], {request.id: (None, request.payload)})
    # the completion path then stores the handler's error the plain way
    await storage.messages.save_reply(Reply(request.id, b"error", is_error=True), fence)


async def test_outgoing_duplicates_follow_the_dedupe_rules(storage: Storage) -> None:
    fence = await owned(storage)
    first, second = msg(), msg()
    await storage.messages.save_requests([first, second])
    known = msg("e2", shard=S2, primary_key="order-1")
    assert (await storage.messages.save_request(known)).__class__.__name__ == "Saved"
    same_key = msg("e2", shard=S2, primary_key="order-1")  # another id, the same key
    twin_a, twin_b = (msg("e3", shard=S2, primary_key="p") for _ in range(2))
    unit = storage.messages.unit(fence, first.id)
    unit.send([same_key, twin_a, twin_b])
    await unit.commit(Reply(first.id, b"r"))
    # a re-run of the same handler (another message) sends the very same message again
    rerun = storage.messages.unit(fence, second.id)
    rerun.send([twin_a])
    await rerun.commit(Reply(second.id, b"r"))

    stored_ids = set(await storage.messages.inspect([same_key.id, twin_a.id, twin_b.id]))
    assert stored_ids == {twin_a.id}
    assert await storage.messages.save_request(same_key) == Duplicate(known.id, None)
    assert await storage.messages.save_request(twin_b) == Duplicate(twin_a.id, None)


async def test_callbacks_fire_exactly_once(storage: Storage) -> None:
    fence = await owned(storage)
    ok, refused, dropped = msg(), msg(), msg()
    await storage.messages.save_requests([ok, refused, dropped])
    fired: list[str] = []

    unit = storage.messages.unit(fence, ok.id)
    unit.on_commit(lambda: fired.append("commit ok"))
    unit.on_discard(lambda: fired.append("discard ok"))
    unit.put_state("a", b"1", expected_version=None)
    await unit.commit(Reply(ok.id, b"r"))
    await unit.discard()  # after a commit: nothing

    failing = storage.messages.unit(fence, refused.id)
    failing.on_commit(lambda: fired.append("commit refused"))
    failing.on_discard(lambda: fired.append("discard refused"))
    failing.put_state("a", b"2", expected_version=None)  # "a" exists: a conflict
    with pytest.raises(VersionConflict):
        await failing.commit(Reply(refused.id, b"r"))
    await failing.discard()

    gone = storage.messages.unit(fence, dropped.id)
    gone.on_commit(lambda: fired.append("commit dropped"))
    gone.on_discard(lambda: fired.append("discard dropped"))
    await gone.discard()
    await gone.discard()
    assert fired == ["commit ok", "discard refused", "discard dropped"]


async def test_a_finished_unit_refuses_more_work(storage: Storage) -> None:
    unit, request = await stored_unit(storage)
    await unit.commit(Reply(request.id, b"r"))
    for call in (lambda: unit.put_state("k", b"v", expected_version=None),
                 lambda: unit.send([msg()]), lambda: unit.on_commit(lambda: None)):
        with pytest.raises(ClusterError) as info:
            call()
        assert info.value.details["field"] == "unit"
    for late in (unit.transaction(), unit.commit(Reply(request.id, b"again"))):
        with pytest.raises(ClusterError) as info:
            await late
        assert info.value.details["field"] == "unit"
    assert await storage.state.get("k") is None


@pytest.mark.parametrize("finish", ["commit", "discard"])
async def test_writes_through_a_finished_units_handle_are_refused(
    storage: Storage, app: AppTable, finish: str,
) -> None:
    unit, request = await stored_unit(storage)
    tx = await unit.transaction()
    await (unit.commit(Reply(request.id, b"r")) if finish == "commit" else unit.discard())
    if app.backend == "memory":
        with pytest.raises(ClusterError) as info:
            tx.on_commit(lambda: None)
        assert info.value.details["field"] == "transaction"
    else:
        with pytest.raises(ClusterError) as info:
            await tx.execute(f"INSERT INTO {app.table} VALUES ('e1', 'late')")
        assert info.value.details["field"] == "transaction"
    assert await app.rows() == []


async def test_the_transaction_is_opened_once(storage: Storage) -> None:
    unit, _ = await stored_unit(storage)
    first = await unit.transaction()
    assert unit.used
    assert await unit.transaction() is first
    await unit.discard()


async def test_an_unused_unit_costs_no_transaction(
    make_storage: MakeStorage, backend: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PostgreSQL: one pooled connection, held below by another unit; a unit that
    # asked the pool for a connection would fail after the (short) acquire timeout
    storage = await make_storage(pool_size=1, connect_timeout=0.5)
    fence = await owned(storage)
    request, holder = msg(), msg()
    await storage.messages.save_requests([request, holder])
    calls: list[str] = []
    if backend == "sqlite":  # count the jobs run on the connection's thread
        db = storage.messages._db  # type: ignore[attr-defined]
        run = db._run
        monkeypatch.setattr(db, "_run", lambda *a: calls.append("sqlite") or run(*a))
    holding = storage.messages.unit(fence, holder.id)
    await holding.transaction()

    for _ in range(100):
        unit = storage.messages.unit(fence, request.id)
        assert not unit.used and unit.sent == []
        await unit.discard()
    assert calls == []
    await holding.discard()
    # an unused unit's commit is the plain fenced completion (group-committed)
    await storage.messages.unit(fence, request.id).commit(Reply(request.id, b"plain"))
    assert await storage.messages.replies_for([request.id]) == {
        request.id: Reply(request.id, b"plain")}


async def test_two_units_of_one_key_racing_make_one_version_conflict(
    make_storage: MakeStorage, namespace: Namespace,
) -> None:
    one, two = await make_storage(), await make_storage()
    app = AppTable(namespace, one)
    await app.create()
    fence = await owned(one)
    first, second = msg(), msg()
    await one.messages.save_requests([first, second])
    await one.state.set("Cart/c1", b"v1", expected_version=None)
    units = [store.messages.unit(fence, m.id) for store, m in ((one, first), (two, second))]
    for i, unit in enumerate(units):
        unit.put_state("Cart/c1", f"from {i}".encode(), expected_version=1)
        await app.insert(unit, "c1", f"effect {i}")
    outcomes = await asyncio.gather(
        *(u.commit(Reply(m.id, b"r")) for u, m in zip(units, (first, second), strict=True)),
        return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "VersionConflict"]
    winner = outcomes.index(None)
    assert await one.state.get("Cart/c1") == Versioned(f"from {winner}".encode(), 2)
    assert await app.rows() == [("c1", f"effect {winner}")]
    replies = await one.messages.replies_for([first.id, second.id])
    assert list(replies) == [(first, second)[winner].id]
