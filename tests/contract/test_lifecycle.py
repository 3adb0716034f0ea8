"""Start, migrations, shard-count checks, restarts and info, on every backend."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from covey.core import Reason, ShardCountMismatch, StorageOptions, TestClock
from covey.storage import Reply, Saved, Storage

from ._helpers import RUNNER_A, S1, msg
from .conftest import MakeStorage

#: the memory backend keeps nothing across instances or restarts: these tests are
#: generated for the SQL backends only (not skipped for memory)
sql_only = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@sql_only
async def test_shard_count_mismatch_is_refused(make_storage: MakeStorage, backend: str) -> None:
    await make_storage(shards=16)
    other = await make_storage(shards=32, start=False)
    with pytest.raises(ShardCountMismatch) as info:
        await other.start()
    assert info.value.reason is Reason.SHARD_COUNT_MISMATCH
    assert "16" in str(info.value) and "32" in str(info.value)
    assert info.value.details == {"recorded": 16, "configured": 32}


@sql_only
async def test_data_survives_a_restart(make_storage: MakeStorage, backend: str) -> None:
    first = await make_storage()
    fence = (await first.runners.acquire(RUNNER_A, [S1]))[S1]
    m, done = msg(primary_key="p"), msg()
    await first.messages.save_request(m)
    await first.messages.save_request(done)
    from covey.storage import Fence

    await first.messages.save_reply(Reply(done.id, b"r"), Fence(S1, fence))
    await first.state.set("k", b"v", expected_version=None)
    await first.close()
    second = await make_storage()
    assert [x.id for x in await second.messages.unprocessed([S1], limit=10)] == [m.id]
    assert (await second.messages.replies_for([done.id]))[done.id].payload == b"r"
    assert (await second.state.get("k")) is not None


async def test_concurrent_starts_migrate_once(make_storage: MakeStorage, backend: str) -> None:
    stores = [await make_storage(start=False) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))
    assert isinstance(await stores[0].messages.save_request(msg()), Saved)
    info = await stores[3].info()
    assert info.messages_total == 1 and info.messages_unprocessed == 1


async def test_info_describes_the_store(storage: Storage) -> None:
    await storage.runners.register(RUNNER_A)
    for _ in range(3):
        await storage.messages.save_request(msg())
    info = await storage.info()
    assert info.backend == storage.backend
    assert info.shards == 16
    assert info.runners == 1
    assert info.messages_total == 3 and info.messages_unprocessed == 3
    if storage.backend != "memory":
        assert info.schema_version >= 1


@sql_only
async def test_migrations_produce_the_fresh_install_schema(
    backend: str, tmp_path: Path, clock: TestClock, request: pytest.FixtureRequest
) -> None:
    fingerprints: list[str] = []
    for install_from in ("schema", "migrations"):
        store: Any
        schema = f"m_{uuid.uuid4().hex[:10]}"
        options = StorageOptions(schema=schema)
        if backend == "sqlite":
            from covey.storage.sqlite import SqliteStorage

            store = SqliteStorage(str(tmp_path / f"{install_from}.db"), shards=8,
                                  options=options, clock=clock, install_from=install_from)
        else:
            from covey.storage.postgres import PostgresStorage

            url = request.getfixturevalue("pg_database")
            store = PostgresStorage(url, shards=8, options=options, clock=clock,
                                    install_from=install_from)
        async with store:
            fingerprints.append(await store.schema_fingerprint())
            assert (await store.info()).schema_version >= 2
        if backend == "postgres":
            conn = await asyncpg.connect(request.getfixturevalue("pg_database"))
            try:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            finally:
                await conn.close()
    assert fingerprints[0] == fingerprints[1]
    assert "message" in fingerprints[0]
