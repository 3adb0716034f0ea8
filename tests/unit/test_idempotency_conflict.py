"""Idempotency keys that cannot lie: a repeated primary key with another payload
is refused with ``idempotency_conflict``; with the same payload it gets the
stored reply and the handler does not run again (memory and SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import covey
from covey.core import EntityError, Reason
from covey.testing import TestCluster


class Transfer(BaseModel):
    key: str
    amount: int


RUNS: list[tuple[str, str, int]] = []  # (entity id, key, amount) per handler run


class Ledger(covey.Entity, type="IdemLedger"):
    total: int = 0

    @covey.rpc(persisted=True, primary_key=lambda t: t.key)
    async def credit(self, cmd: Transfer) -> int:
        RUNS.append((self.ctx.entity_id, cmd.key, cmd.amount))
        self.total += cmd.amount
        return self.total

    @covey.rpc(persisted=True, primary_key=lambda t: t.key)
    async def debit(self, cmd: Transfer) -> int:
        RUNS.append((self.ctx.entity_id, cmd.key, -cmd.amount))
        self.total -= cmd.amount
        return self.total


@pytest.fixture(params=["memory", "sqlite"])
async def tc(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TestCluster]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'idem.db'}"
    RUNS.clear()
    async with TestCluster(Ledger, runners=1, shards=4, database_url=url) as cluster:
        yield cluster


async def test_the_same_key_with_another_payload_is_refused(tc: TestCluster) -> None:
    ledger = tc.client(Ledger, "acct-1")
    assert await ledger.credit(Transfer(key="t1", amount=5)) == 5
    [first] = await tc.storage.messages.list_messages("IdemLedger")
    with pytest.raises(EntityError) as info:
        await ledger.credit(Transfer(key="t1", amount=500))
    error = info.value
    assert error.reason is Reason.IDEMPOTENCY_CONFLICT and not error.retryable
    assert error.details == {
        "entity_type": "IdemLedger", "entity_id": "acct-1", "rpc": "credit",
        "primary_key": "t1", "original_id": first.message.id,
    }
    assert "'t1'" in str(error)
    assert RUNS == [("acct-1", "t1", 5)]  # the handler never saw the second payload
    # nothing stored for it, and the first request is as it was
    records = await tc.storage.messages.list_messages("IdemLedger")
    assert [r.message.id for r in records] == [first.message.id]
    assert records[0].message.payload == first.message.payload
    assert await ledger.credit(Transfer(key="t2", amount=1)) == 6  # the entity is fine


async def test_the_same_key_with_the_same_payload_gets_the_stored_reply(tc: TestCluster) -> None:
    ledger = tc.client(Ledger, "acct-2")
    assert await ledger.credit(Transfer(key="t1", amount=5)) == 5
    assert await ledger.credit(Transfer(key="t2", amount=3)) == 8
    assert await ledger.credit(Transfer(key="t1", amount=5)) == 5  # the reply of then
    assert RUNS == [("acct-2", "t1", 5), ("acct-2", "t2", 3)]


async def test_a_key_belongs_to_one_entity_and_one_rpc(tc: TestCluster) -> None:
    # the ledger a user once wrote by hand was keyed globally: one tenant's
    # request silently dropped another's
    assert await tc.client(Ledger, "tenant-a").credit(Transfer(key="k", amount=1)) == 1
    assert await tc.client(Ledger, "tenant-b").credit(Transfer(key="k", amount=2)) == 2
    assert await tc.client(Ledger, "tenant-a").debit(Transfer(key="k", amount=7)) == -6
    assert sorted(RUNS) == [("tenant-a", "k", -7), ("tenant-a", "k", 1), ("tenant-b", "k", 2)]


async def test_a_conflict_is_refused_before_the_first_request_ran(tc: TestCluster) -> None:
    # the first is stored but not answered yet (sent without waiting): the key
    # stands for it already
    quiet = tc.client(Ledger, "acct-3", discard=True)
    assert await quiet.credit(Transfer(key="early", amount=1)) is None
    with pytest.raises(EntityError) as info:
        await tc.client(Ledger, "acct-3").credit(Transfer(key="early", amount=2))
    assert info.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert info.value.details["primary_key"] == "early"
    with pytest.raises(EntityError):  # also for a caller that does not wait
        await quiet.credit(Transfer(key="early", amount=3))
    assert await tc.client(Ledger, "acct-3").credit(Transfer(key="early", amount=1)) == 1
    assert RUNS == [("acct-3", "early", 1)]
