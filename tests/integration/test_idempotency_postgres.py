"""Idempotency keys that cannot lie, on PostgreSQL: a repeated primary key with
another payload is ``idempotency_conflict``; with the same payload, the stored reply."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import BaseModel

import covey
from covey.core import CoveyConfig, EntityError, Reason, StorageOptions

pytestmark = pytest.mark.postgres


class Transfer(BaseModel):
    key: str
    amount: int


RUNS: list[tuple[str, int]] = []


class PgLedger(covey.Entity, type="IdemLedgerPg"):
    total: int = 0

    @covey.rpc(persisted=True, primary_key=lambda t: t.key)
    async def credit(self, cmd: Transfer) -> int:
        RUNS.append((cmd.key, cmd.amount))
        self.total += cmd.amount
        return self.total


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return pg_database  # sync: pg_database runs its own event loop


@pytest.fixture
async def cluster(pg_url: str) -> AsyncIterator[tuple[covey.Cluster, str]]:
    schema = f"idem_{uuid.uuid4().hex[:12]}"
    cluster = covey.Cluster(CoveyConfig(database_url=pg_url, shards=4, cluster_secret="s",
                                        storage=StorageOptions(schema=schema)))
    cluster.register(PgLedger)
    RUNS.clear()
    async with cluster:
        yield cluster, schema


async def test_a_repeated_key_with_another_payload_is_refused(
    cluster: tuple[covey.Cluster, str], pg_url: str
) -> None:
    members, schema = cluster
    ledger = members.client(PgLedger, "acct")
    assert await ledger.credit(Transfer(key="t1", amount=5)) == 5
    with pytest.raises(EntityError) as info:
        await ledger.credit(Transfer(key="t1", amount=9))
    error = info.value
    assert error.reason is Reason.IDEMPOTENCY_CONFLICT and not error.retryable
    assert {k: error.details[k] for k in ("entity_type", "entity_id", "rpc", "primary_key")} == {
        "entity_type": "IdemLedgerPg", "entity_id": "acct", "rpc": "credit", "primary_key": "t1"}
    assert await ledger.credit(Transfer(key="t1", amount=5)) == 5  # same payload: the reply
    assert RUNS == [("t1", 5)]
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(f"SELECT id FROM {schema}.messages WHERE entity_type = $1",
                                "IdemLedgerPg")
    finally:
        await conn.close()
    assert [r["id"] for r in rows] == [error.details["original_id"]]  # nothing else stored
