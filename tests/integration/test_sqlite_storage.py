"""What only the SQLite backend promises: pragmas, migrations, locks, corruption."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from covey.core import (
    EntityAddress,
    MigrationError,
    Reason,
    RunnerAddress,
    ShardId,
    StorageError,
    StorageOptions,
    TestClock,
)
from covey.storage import Message
from covey.storage._base import migrations
from covey.storage.sqlite import SqliteStorage, _connection

SHARD = ShardId("default", 1)


def _message(id_: int, **fields: object) -> Message:
    return Message(
        id=id_, address=EntityAddress("Account", "e1", SHARD), tag="deposit", payload=b"p",
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


@pytest.fixture
async def storage(tmp_path: Path, clock: TestClock) -> AsyncIterator[SqliteStorage]:
    async with SqliteStorage(
        str(tmp_path / "covey.db"), shards=8, options=StorageOptions(), clock=clock
    ) as store:
        yield store


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


async def test_creates_missing_directories_and_uses_wal(
    tmp_path: Path, clock: TestClock
) -> None:
    path = tmp_path / "a" / "b" / "covey.db"
    async with SqliteStorage(str(path), shards=8, options=StorageOptions(), clock=clock) as s:
        assert path.exists()
        assert _query(path, "PRAGMA journal_mode") == [("wal",)]
        assert (await s.info()).schema_version == len(migrations("covey.storage.sqlite"))


async def test_stored_times_come_from_the_injected_clock(
    storage: SqliteStorage, clock: TestClock
) -> None:
    await clock.advance(1234.5)
    await storage.messages.save_request(_message(1))
    await storage.runners.register(RunnerAddress("10.0.0.1", 1))
    path = Path(storage.path)
    assert _query(path, "SELECT created_at FROM covey_messages") == [(clock.now(),)]
    assert _query(path, "SELECT last_heartbeat FROM covey_runners") == [(clock.now(),)]


async def test_an_old_database_gets_only_the_pending_migrations(
    tmp_path: Path, clock: TestClock
) -> None:
    path = tmp_path / "old.db"
    _, _, initial = migrations("covey.storage.sqlite")[0]
    first = _connection.split_statements(initial)
    with sqlite3.connect(path) as db:  # a database left by a covey that knew only 0001
        db.execute("CREATE TABLE covey_migrations (version INTEGER PRIMARY KEY, "
                   "name TEXT NOT NULL, applied_at REAL NOT NULL)")
        for statement in first:
            db.execute(statement)
        db.execute("INSERT INTO covey_migrations VALUES (1, '0001_initial.sql', 0)")
        db.execute("INSERT INTO covey_meta VALUES ('shards', '8')")
        db.execute("INSERT INTO covey_messages (id, entity_type, entity_id, shard_group, shard, "
                   "tag, payload, created_at) VALUES (5, 'A', 'e', 'default', 1, 't', x'00', 0)")

    async with SqliteStorage(str(path), shards=8, options=StorageOptions(), clock=clock) as s:
        assert (await s.info()).schema_version == len(migrations("covey.storage.sqlite"))
        assert await s.state.set("k", b"v", expected_version=None) == 1
        kept = await s.messages.get(5)
        assert kept is not None
        assert kept.payload == b"\x00"
        fresh = SqliteStorage(str(tmp_path / "fresh.db"), shards=8, options=StorageOptions(),
                              clock=clock)
        async with fresh:
            assert await s.schema_fingerprint() == await fresh.schema_fingerprint()


async def test_fingerprint_sees_a_schema_difference(storage: SqliteStorage) -> None:
    before = await storage.schema_fingerprint()
    with sqlite3.connect(storage.path) as db:
        db.execute("CREATE INDEX extra ON covey_messages (tag)")
    assert await storage.schema_fingerprint() != before


async def test_a_database_from_a_newer_covey_is_refused(tmp_path: Path, clock: TestClock) -> None:
    path = tmp_path / "newer.db"
    async with SqliteStorage(str(path), shards=8, options=StorageOptions(), clock=clock):
        pass
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO covey_migrations VALUES (99, '0099_future.sql', 0)")
    with pytest.raises(MigrationError):
        await SqliteStorage(str(path), shards=8, options=StorageOptions(), clock=clock).start()


async def test_corrupt_headers_name_the_message(storage: SqliteStorage) -> None:
    await storage.messages.save_request(_message(42, headers={"a": "b"}))
    with sqlite3.connect(storage.path) as db:
        db.execute("UPDATE covey_messages SET headers = '{not json' WHERE id = 42")
    with pytest.raises(StorageError) as info:
        await storage.messages.get(42)
    assert info.value.reason is Reason.STORAGE_CORRUPT
    assert info.value.details["message_id"] == 42


async def test_a_payload_stored_as_text_is_corrupt(storage: SqliteStorage) -> None:
    await storage.messages.save_request(_message(43))
    with sqlite3.connect(storage.path) as db:
        db.execute("UPDATE covey_messages SET payload = 'text' WHERE id = 43")
    with pytest.raises(StorageError) as info:
        await storage.messages.unprocessed([SHARD], limit=5)
    assert info.value.reason is Reason.STORAGE_CORRUPT
    assert "43" in str(info.value)


async def test_a_held_lock_ends_in_storage_unavailable_not_a_hang(
    storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: TestClock
) -> None:
    monkeypatch.setattr(_connection, "BUSY_TIMEOUT_MS", 20)
    monkeypatch.setattr(_connection, "_BACKOFF", 0.01)
    async with SqliteStorage(
        storage.path, shards=8, options=StorageOptions(), clock=clock
    ) as impatient:
        blocker = sqlite3.connect(storage.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StorageError) as info:
                await impatient.messages.save_request(_message(7))
            assert info.value.reason is Reason.STORAGE_UNAVAILABLE
            assert info.value.retryable
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # once the lock is gone the same instance works again
        await impatient.messages.save_request(_message(7))
    assert await storage.messages.get(7) is not None


async def test_a_briefly_held_lock_is_waited_out(storage: SqliteStorage) -> None:
    blocker = sqlite3.connect(storage.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    save = asyncio.create_task(storage.messages.save_request(_message(8)))
    await asyncio.sleep(0.2)
    assert not save.done()  # queued behind the other writer, not failed
    blocker.execute("ROLLBACK")
    blocker.close()
    await asyncio.wait_for(save, timeout=10)
    assert await storage.messages.get(8) is not None


async def test_machine_ids_of_long_silent_runners_are_reused(
    storage: SqliteStorage, clock: TestClock
) -> None:
    first = await storage.runners.register(RunnerAddress("10.0.0.1", 1))
    second = await storage.runners.register(RunnerAddress("10.0.0.2", 1))
    assert (first, second) == (0, 1)
    await clock.advance(301)
    await storage.runners.heartbeat(RunnerAddress("10.0.0.2", 1))
    assert await storage.runners.register(RunnerAddress("10.0.0.3", 1)) == 0
    assert not await storage.runners.heartbeat(RunnerAddress("10.0.0.1", 1))


async def test_concurrent_writes_share_transactions(storage: SqliteStorage) -> None:
    await asyncio.gather(*(storage.messages.save_request(_message(100 + n)) for n in range(50)))
    batcher = storage._writer._batcher
    assert batcher is not None
    assert batcher.ops == 50
    assert batcher.batches < 50


async def test_a_write_cancelled_while_waiting_for_the_lock_leaves_no_transaction_open(
    storage: SqliteStorage,
) -> None:
    blocker = sqlite3.connect(storage.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    read = asyncio.create_task(storage.messages.unprocessed([SHARD], limit=5))
    await asyncio.sleep(0.1)  # let it reach BEGIN IMMEDIATE on the driver thread
    read.cancel()
    blocker.execute("ROLLBACK")  # now the abandoned BEGIN goes through
    blocker.close()
    with pytest.raises(asyncio.CancelledError):
        await read
    await storage.messages.save_request(_message(9))
    assert [m.id for m in await storage.messages.unprocessed([SHARD], limit=5)] == [9]
