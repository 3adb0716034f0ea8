"""Bad data never reaches the database, on every backend (issue 8).

The argument table of every method is in ``test_argument_checks.py``; here: the
limits themselves are stored; on PostgreSQL, what still reaches the server and
is refused there maps to a typed error (non-retryable for bad data, retryable
only for transient failures); and a whole runner on each backend: bad ids and
oversized messages are refused end to end, and a persisted call to an unknown
entity type is completed with its error."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import covey
from covey.core import (
    ClusterError,
    CoveyConfig,
    Reason,
    RunnerAddress,
    ShardingOptions,
    StorageError,
    StorageOptions,
)
from covey.sharding import LocalNetwork, LocalTransport
from covey.storage import Duplicate, Saved, Storage
from covey.storage.postgres._errors import is_unavailable, translate, translated
from tests.conftest import drop_schema

from ._helpers import S1, msg
from .test_argument_checks import NOISE


def _refused(error: BaseException, field: str | None = None) -> None:
    assert isinstance(error, ClusterError), repr(error)
    assert error.reason is Reason.INVALID_ARGUMENT, repr(error)
    assert not error.retryable
    if field is not None:
        assert error.details.get("field") == field, repr(error)


async def test_the_limits_themselves_are_stored(storage: Storage) -> None:
    entity_id = "é" * 512  # 1024 UTF-8 bytes
    key = secrets.token_hex(2048)  # 4096 bytes, incompressible: stored through its hash
    first = msg(entity_id, primary_key=key, headers={"x-big": "v" * 8192},
                tag="t" * 255, deliver_at=0)
    assert await storage.messages.save_request(first) == Saved(first.id)
    again = msg(entity_id, primary_key=key, tag="t" * 255)
    assert await storage.messages.save_request(again) == Duplicate(first.id, None)
    [stored] = await storage.messages.unprocessed([S1], limit=10)
    assert stored.address.entity_id == entity_id and stored.primary_key == key


# ---- PostgreSQL errors: what a retry cannot cure is not retryable ----------------

#: PostgreSQL-only tests are generated for that backend alone (not skipped elsewhere).
postgres_only = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@pytest.fixture
def pg_url(backend: str, request: pytest.FixtureRequest) -> str:
    assert backend == "postgres"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _pg_error(conn: asyncpg.Connection, sql: str, *args: Any) -> BaseException:
    try:
        await conn.execute(sql, *args)
    except Exception as exc:
        return exc
    raise AssertionError(f"no error from {sql!r}")


@postgres_only
async def test_postgres_data_errors_are_not_retryable(pg: asyncpg.Connection) -> None:
    await pg.execute("CREATE TEMP TABLE t (k text UNIQUE, n int4 NOT NULL DEFAULT 0)")
    await pg.execute("INSERT INTO t (k) VALUES ('taken')")
    cases = {
        "22021": await _pg_error(pg, "INSERT INTO t (k) VALUES ($1)", "a\x00b"),  # NUL
        "22003": await _pg_error(pg, "INSERT INTO t (k, n) VALUES ('x', 2147483648::int8)"),
        "54000": await _pg_error(pg, "INSERT INTO t (k) VALUES ($1)", NOISE),  # index row
        "23505": await _pg_error(pg, "INSERT INTO t (k) VALUES ('taken')"),
        "23502": await _pg_error(pg, "INSERT INTO t (k, n) VALUES ('y', NULL)"),
    }
    for sqlstate, exc in cases.items():
        error = translate(exc, "a test write")
        assert isinstance(error, StorageError), repr(error)
        assert error.reason is Reason.INVALID_ARGUMENT, (sqlstate, repr(error))
        assert not error.retryable and error.details["sqlstate"] == sqlstate
        assert error.__cause__ is exc and not is_unavailable(error)
    # a lone surrogate is refused by the driver before the server sees it
    surrogate = await _pg_error(pg, "INSERT INTO t (k) VALUES ($1)", "\ud800")
    error = translate(surrogate, "a test write")
    assert isinstance(error, ClusterError) and error.reason is Reason.INVALID_ARGUMENT
    assert not error.retryable and not is_unavailable(error)


@postgres_only
async def test_postgres_program_errors_are_not_retryable(pg: asyncpg.Connection) -> None:
    for sql, sqlstate in [("SELECT * FROM no_such_table", "42P01"), ("SELEKT 1", "42601")]:
        error = translate(await _pg_error(pg, sql), "a test read")
        assert isinstance(error, StorageError)
        assert error.reason is Reason.STORAGE_CORRUPT and not error.retryable
        assert error.details["sqlstate"] == sqlstate


@postgres_only
async def test_postgres_transient_errors_stay_retryable(
    pg: asyncpg.Connection, pg_url: str
) -> None:
    await pg.execute("SET statement_timeout = '10ms'")
    cancelled = await _pg_error(pg, "SELECT pg_sleep(5)")  # 57014
    await pg.execute("RESET statement_timeout")
    await pg.execute("CREATE TABLE IF NOT EXISTS covey_lock_probe (k int)")
    other = await asyncpg.connect(pg_url)
    try:
        async with other.transaction():
            await other.execute("LOCK TABLE covey_lock_probe IN ACCESS EXCLUSIVE MODE")
            await pg.execute("SET lock_timeout = '10ms'")
            locked = await _pg_error(pg, "SELECT * FROM covey_lock_probe")  # 55P03
    finally:
        await other.close()
        await pg.execute("RESET lock_timeout")
        await pg.execute("DROP TABLE IF EXISTS covey_lock_probe")
    for exc in (cancelled, locked, asyncpg.exceptions.SerializationError("x"),
                asyncpg.exceptions.DeadlockDetectedError("x"),
                asyncpg.exceptions.OutOfMemoryError("x")):
        error = translate(exc, "a test write")
        assert isinstance(error, StorageError)
        assert error.reason is Reason.STORAGE_UNAVAILABLE and error.retryable, repr(error)


@postgres_only
async def test_postgres_refusal_through_the_storage_wrapper_is_not_retryable(
    pg: asyncpg.Connection,
) -> None:
    # what every PostgreSQL storage method runs its statements in
    with pytest.raises(ClusterError) as info:
        with translated("a test read"):
            await pg.fetchval("SELECT $1::text", "a\x00b")
    assert info.value.reason is Reason.INVALID_ARGUMENT and not info.value.retryable
    assert info.value.details["sqlstate"] == "22021"
    assert await pg.fetchval("SELECT 1") == 1  # the connection still serves


# ---- a whole runner on each backend -------------------------------------------------

class Vault(covey.Entity, type="BadArgsVault"):
    @covey.rpc(persisted=True, primary_key=lambda text: text[:8])
    async def put(self, text: str) -> int:
        return len(text)

    @covey.rpc
    async def echo(self, text: str) -> int:
        return len(text)


@pytest.fixture
async def runner(backend: str, tmp_path: Path,
                 request: pytest.FixtureRequest) -> AsyncIterator[covey.Cluster]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'runner.db'}"}.get(backend)
    if url is None:
        url = str(request.getfixturevalue("pg_database"))
    config = CoveyConfig(
        database_url=url, shards=8, storage=StorageOptions(schema=schema),
        sharding=ShardingOptions(membership_interval=0.05, poll_interval=0.5,
                                 call_timeout=10.0))
    cluster = covey.Cluster(config, transport=LocalTransport(LocalNetwork(),
                                                             RunnerAddress("runner", 1)))
    cluster.register(Vault)
    async with cluster:
        deadline = asyncio.get_running_loop().time() + 10
        while len(cluster.sharding.owned) < 8:  # the only runner: it takes every shard
            assert asyncio.get_running_loop().time() < deadline, "shards not acquired"
            await asyncio.sleep(0.01)
        yield cluster
    if backend == "postgres":
        await drop_schema(url, schema)


async def _stored(cluster: covey.Cluster, entity_type: str = "BadArgsVault") -> int:
    return sum(n for *_, n in await cluster.storage.messages.count_messages(entity_type))


async def test_bad_ids_and_big_messages_are_refused_end_to_end(runner: covey.Cluster) -> None:
    big = "y" * (runner.config.transport.max_frame_bytes + 1)
    for entity_id in ("v\x00", "\ud800", NOISE):
        for rpc in ("put", "echo"):
            with pytest.raises(ClusterError) as info:
                await getattr(runner.client(Vault, entity_id), rpc)("text")
            _refused(info.value, "entity_id")
    for rpc in ("put", "echo"):
        with pytest.raises(ClusterError) as info:
            await getattr(runner.client(Vault, "v1"), rpc)(big)
        assert info.value.reason is Reason.FRAME_TOO_LARGE and not info.value.retryable
    with pytest.raises(ClusterError) as info:
        await runner.client(Vault, "v1").put("key\x00 in the primary key")
    _refused(info.value, "primary_key")
    assert await _stored(runner) == 0
    assert await runner.client(Vault, "v1").put("fits") == 4  # still serving
    assert await runner.client(Vault, "v1").echo("fits") == 4


async def test_a_stored_call_to_an_unknown_type_is_completed_end_to_end(
    runner: covey.Cluster,
) -> None:
    for entity_type, tag, reason in [("NoSuchType", "x", Reason.UNKNOWN_ENTITY_TYPE),
                                     ("BadArgsVault", "nope", Reason.UNKNOWN_RPC)]:
        with pytest.raises(ClusterError) as info:
            await runner.send_raw(entity_type, "u1", tag, b"", persisted=True, timeout=5)
        assert info.value.reason is reason and not info.value.retryable
        records = await runner.storage.messages.list_messages(entity_type)
        assert [r.reply is not None and r.reply.is_error for r in records] == [True]
    assert await runner.client(Vault, "u1").put("fine") == 4


@postgres_only
async def test_bad_messages_in_the_application_transaction_are_not_stored(
    backend: str, runner: covey.Cluster
) -> None:
    assert backend == "postgres"
    big = "y" * (runner.config.transport.max_frame_bytes + 1)
    conn = await asyncpg.connect(runner.config.database_url)
    try:
        async with conn.transaction():
            with pytest.raises(ClusterError) as info:
                await runner.client(Vault, "tx", transaction=conn).put(big)
            assert info.value.reason is Reason.FRAME_TOO_LARGE
            with pytest.raises(ClusterError) as info:
                await runner.client(Vault, "tx", transaction=conn).put("k\x00")
            _refused(info.value, "primary_key")
            assert await runner.client(Vault, "tx", transaction=conn).put("good") is None
    finally:
        await conn.close()
    deadline = asyncio.get_running_loop().time() + 10
    while await _stored(runner) != 1 or await runner.storage.messages.list_messages(
            "BadArgsVault", state="unprocessed"):
        assert asyncio.get_running_loop().time() < deadline, "the good message did not run"
        await asyncio.sleep(0.02)
