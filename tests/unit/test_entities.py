"""Entities on the in-memory TestCluster: routing, persistence, errors, options."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import covey
from covey.core import EntityError, Reason, SerializationError
from covey.testing import TestCluster as _TestCluster

from ._entities import APPLIED, STARTS, Account, Deposit, Ephemeral, Parallel, Slow
from ._waiting import until

ALL = (Account, Slow, Parallel, Ephemeral)


@pytest.fixture(params=["memory", "sqlite"], autouse=True)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Every test here runs on the in-memory store and on SQLite."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'c.db'}"
    _URL.append(url)
    yield
    _URL.pop()


_URL: list[str] = []


def TestCluster(*types: type[Any], **options: Any) -> _TestCluster:
    return _TestCluster(*types, database_url=_URL[-1], **options)


async def test_calls_reach_entities_on_every_runner() -> None:
    async with TestCluster(*ALL, runners=3) as tc:
        runners = set()
        for i in range(30):
            with covey.use_context(covey.RequestContext(tenant_id=f"t{i}")):
                where = await tc.client(Account, f"a{i}").where()
            runners.add(where["runner"])
            assert where["entity"] == f"a{i}" and where["placed"] == f"Account/a{i}"
            assert where["tenant"] == f"t{i}"  # the caller's context reached the handler
        assert len(runners) == 3  # 30 entities spread over the three runners


async def test_state_lives_in_one_instance_per_id() -> None:
    async with TestCluster(*ALL, runners=3) as tc:
        a, b = tc.client(Account, "a"), tc.client(Account, "b")
        assert await a.add_volatile(5) == 5
        assert await a.add_volatile(2) == 7
        assert await b.add_volatile(1) == 1
        assert await a.balance_of() == 7


async def test_persisted_dedupe_returns_the_stored_reply_without_running_again() -> None:
    APPLIED.clear()
    async with TestCluster(*ALL, runners=2) as tc:
        account = tc.client(Account, "acct-1")
        assert await account.deposit(Deposit(txn_id="t1", amount=5)) == 5
        assert await account.deposit(Deposit(txn_id="t2", amount=3)) == 8
        assert await account.deposit(Deposit(txn_id="t1", amount=5)) == 5  # the stored reply
        assert APPLIED == [("acct-1", "t1"), ("acct-1", "t2")]
        assert await account.balance_of() == 8


async def test_mutable_defaults_are_per_instance() -> None:
    async with TestCluster(*ALL, runners=1) as tc:
        await tc.client(Account, "x").deposit(Deposit(txn_id="x1", amount=1))
        await tc.client(Account, "y").deposit(Deposit(txn_id="y1", amount=1))
        runtime = tc.runners[0].runtime
        histories = {a.entity_id: i.entity.history for a, i in runtime.instances.items()}
        assert histories == {"x": ["x1"], "y": ["y1"]}


async def test_handler_errors_are_typed_and_the_runner_keeps_serving() -> None:
    async with TestCluster(*ALL, runners=2) as tc:
        account = tc.client(Account, "err")
        with pytest.raises(EntityError) as info:
            await account.fail("boom")
        assert info.value.reason is Reason.HANDLER_FAILED
        assert info.value.details["error_type"] == "ValueError"
        assert info.value.details["message"] == "boom"
        assert await account.add_volatile(1) == 1


async def test_bad_input_gets_typed_errors() -> None:
    async with TestCluster(*ALL, runners=2) as tc:
        member = tc.client_member
        with pytest.raises(EntityError) as info:
            await member.send_raw("Nope", "x", "ping", b"")
        assert info.value.reason is Reason.UNKNOWN_ENTITY_TYPE
        with pytest.raises(EntityError) as info:
            await member.send_raw("Account", "x", "nope", b"")
        assert info.value.reason is Reason.UNKNOWN_RPC
        with pytest.raises(SerializationError) as serr:
            await member.send_raw("Account", "x", "add_volatile", b"\xc1garbage")
        assert serr.value.reason is Reason.PAYLOAD_INVALID
        with pytest.raises(SerializationError) as serr:  # validated before sending
            await tc.client(Account, "x").deposit({"txn_id": "t", "amount": "lots"})
        assert serr.value.details["fields"] == ["amount"]
        # persisted malformed payload: an error reply is stored, nothing crashes
        with pytest.raises(SerializationError):
            await member.send_raw("Account", "x", "deposit", b"\xc1", persisted=True)
        assert await tc.client(Account, "x").add_volatile(1) == 1


async def test_concurrency_one_is_serial_and_mailbox_overflow_fails_fast() -> None:
    async with TestCluster(*ALL, runners=1) as tc:
        slow = tc.client(Slow, "s")
        results = await asyncio.gather(
            *(slow.work(0.05) for _ in range(6)), return_exceptions=True
        )
        full = [r for r in results if isinstance(r, EntityError)]
        assert full and all(r.reason is Reason.MAILBOX_FULL for r in full)
        assert all(r == 1 for r in results if isinstance(r, int))  # never two at once


async def test_concurrency_option_allows_parallel_handlers() -> None:
    async with TestCluster(*ALL, runners=1) as tc:
        par = tc.client(Parallel, "p")
        peaks = await asyncio.gather(*(par.work(0.05) for _ in range(8)))
        assert max(peaks) == 4


async def test_idle_instances_are_reaped() -> None:
    STARTS.clear()
    async with TestCluster(*ALL, runners=1) as tc:
        eph = tc.client(Ephemeral, "e")
        await eph.ping()
        runtime = tc.runners[0].runtime

        def alive() -> bool:
            return any(a.entity_type == "Ephemeral" for a in runtime.instances)

        assert alive()

        async def reaped() -> bool:  # by this reap or by the runner's own reaper loop
            await runtime.reap()
            return not alive()

        await until(reaped)  # its max_idle (0.2 s) passed without requests
        await eph.ping()
        assert STARTS == ["e", "e"] and alive()  # the next call starts a new instance


async def test_fire_and_forget() -> None:
    async with TestCluster(*ALL, runners=2) as tc:
        assert await tc.client(Account, "f", discard=True).add_volatile(4) is None
        assert await tc.client(Account, "f", discard=True).deposit(
            Deposit(txn_id="d1", amount=1)) is None
        account = tc.client(Account, "f")

        async def both_applied() -> bool:
            return await account.balance_of() == 5

        await until(both_applied)


async def test_timeout_when_nobody_can_serve() -> None:
    async with TestCluster(*ALL, runners=1) as tc:
        await tc.kill(0)
        with pytest.raises(EntityError) as info:
            await tc.client(Account, "z", timeout=0.3).balance_of()
        assert info.value.reason is Reason.TIMEOUT


async def test_killed_runner_persisted_messages_complete_exactly_once_elsewhere() -> None:
    APPLIED.clear()
    async with TestCluster(*ALL, runners=3) as tc:
        calls = [
            tc.client(Account, f"k{i % 20}").deposit(Deposit(txn_id=f"k{i}", amount=1))
            for i in range(200)
        ]
        pending = [asyncio.ensure_future(c) for c in calls]
        await until(lambda: len(APPLIED) >= 10)  # mid-load: some done, most in flight
        await tc.kill(0)
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)]
        txns = [t for _, t in APPLIED]
        assert sorted(set(txns)) == sorted(f"k{i}" for i in range(200))
        # a message may run again only if its first run's reply was never stored;
        # storage holds each once, completed
        info = await tc.storage.info()
        assert info.messages_total == 200 and info.messages_unprocessed == 0


async def test_graceful_stop_fails_no_call() -> None:
    async with TestCluster(*ALL, runners=3) as tc:
        stop = asyncio.Event()
        failures: list[BaseException] = []
        done = 0

        async def caller(n: int) -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    await tc.client(Account, f"g{n}").add_volatile(1)
                    done += 1
                except Exception as exc:
                    failures.append(exc)
                # paced: ten callers spinning flat out in the runners' own event loop
                # would starve the SQLite driver's thread hand-offs (one loop for all)
                await asyncio.sleep(0.002)

        callers = [asyncio.create_task(caller(n)) for n in range(10)]
        await until(lambda: done >= 20)  # calls flow...
        await tc.stop_runner(0)
        await tc.add_runner()
        after_changes = done
        await until(lambda: done >= after_changes + 20)  # ...and go on after the changes
        stop.set()
        await asyncio.gather(*callers)
        assert failures == [] and done > 0


async def test_transactional_send_needs_postgres() -> None:
    async with TestCluster(*ALL, runners=1) as tc:
        with pytest.raises(EntityError) as info:
            await tc.client(Account, "t", transaction=object()).deposit(
                Deposit(txn_id="x", amount=1))
        assert info.value.reason is Reason.INVALID_ARGUMENT
        assert "PostgreSQL" in str(info.value)
