"""Bad arguments never reach the database (issue 8), on every backend.

Names, ids and keys outside their documented limits (NUL, lone surrogates, too
long), too many or too long headers, times that are not finite or negative: each
is refused with a non-retryable ``invalid_argument`` naming the field, nothing is
stored, and the storage keeps working. On PostgreSQL, what still reaches the
server and is refused there maps to a typed error: non-retryable for bad data,
retryable only for transient failures. The last tests run a whole runner on each
backend: bad ids and oversized messages are refused end to end, and a persisted
call to an unknown entity type is completed with its error.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import covey
from covey.core import (
    ClusterError,
    CoveyConfig,
    EntityAddress,
    Reason,
    RunnerAddress,
    ShardId,
    ShardingOptions,
    StorageError,
    StorageOptions,
)
from covey.sharding import LocalNetwork, LocalTransport
from covey.storage import Duplicate, Fence, Reply, Saved, Storage
from covey.storage.postgres._errors import is_unavailable, translate, translated
from tests.conftest import drop_schema

from ._helpers import RUNNER_A, S1, msg

GOOD = msg().address
NOISE = secrets.token_hex(60_000)  # 120 KB that does not compress (index rows!)


def _addr(**change: Any) -> EntityAddress:
    return replace(GOOD, **change)


BAD_MESSAGES: list[tuple[str, str, dict[str, Any]]] = [
    ("address.entity_id", "empty", {"address": _addr(entity_id="")}),
    ("address.entity_id", "NUL", {"address": _addr(entity_id="acct\x00")}),
    ("address.entity_id", "lone surrogate", {"address": _addr(entity_id="\ud800")}),
    ("address.entity_id", "1025 bytes", {"address": _addr(entity_id="e" * 1025)}),
    ("address.entity_id", "120 KB", {"address": _addr(entity_id=NOISE)}),
    ("address.entity_type", "NUL", {"address": _addr(entity_type="Acc\x00")}),
    ("address.entity_type", "256 bytes", {"address": _addr(entity_type="T" * 256)}),
    ("address.shard", "NUL in its group", {"address": _addr(shard=ShardId("d\x00", 1))}),
    ("address.shard", "beyond int4", {"address": _addr(shard=ShardId("default", 2**31))}),
    ("tag", "NUL", {"tag": "dep\x00osit"}),
    ("tag", "256 bytes", {"tag": "t" * 256}),
    ("primary_key", "empty", {"primary_key": ""}),
    ("primary_key", "NUL", {"primary_key": "k\x00"}),
    ("primary_key", "lone surrogate", {"primary_key": "\udc80"}),
    ("primary_key", "4097 bytes", {"primary_key": "k" * 4097}),
    ("headers", "NUL in a value", {"headers": {"x-tenant": "a\x00"}}),
    ("headers", "NUL in a name", {"headers": {"x\x00": "a"}}),
    ("headers", "lone surrogate", {"headers": {"x-user": "\ud83d"}}),
    ("headers", "value over 8 KiB", {"headers": {"x-big": "v" * 8193}}),
    ("headers", "65 headers", {"headers": {f"h{i}": "v" for i in range(65)}}),
    ("deliver_at", "NaN", {"deliver_at": math.nan}),
    ("deliver_at", "inf", {"deliver_at": math.inf}),
    ("deliver_at", "-inf", {"deliver_at": -math.inf}),
    ("deliver_at", "negative", {"deliver_at": -1.0}),
    ("deliver_at", "beyond a float", {"deliver_at": 10**400}),
]


def _refused(error: BaseException, field: str | None = None) -> None:
    assert isinstance(error, ClusterError), repr(error)
    assert error.reason is Reason.INVALID_ARGUMENT, repr(error)
    assert not error.retryable
    if field is not None:
        assert error.details.get("field") == field, repr(error)


@pytest.mark.parametrize(("field", "label", "change"), BAD_MESSAGES,
                         ids=[f"{f}-{label}" for f, label, _ in BAD_MESSAGES])
async def test_a_message_outside_the_limits_is_refused_and_not_stored(
    storage: Storage, field: str, label: str, change: dict[str, Any]
) -> None:
    good = msg()
    bad = replace(msg(), **change)
    with pytest.raises(ClusterError) as info:
        await storage.messages.save_request(bad)
    _refused(info.value, field)
    with pytest.raises(ClusterError) as info:
        await storage.messages.save_requests([good, bad])  # the batch is refused whole
    _refused(info.value, field)
    assert await storage.messages.inspect([good.id, bad.id]) == {}
    assert await storage.messages.list_messages("Account") == []
    assert await storage.messages.next_due([S1]) is None
    assert await storage.messages.save_request(good) == Saved(good.id)  # still works


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


@pytest.mark.parametrize("deliver_at", [math.nan, math.inf, -math.inf, -5.0, "soon"])
async def test_reschedule_refuses_a_time_that_is_not_finite(
    storage: Storage, deliver_at: Any
) -> None:
    fence = Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])
    m = msg(entity_type="covey.Job")
    await storage.messages.save_request(m)
    with pytest.raises(ClusterError) as info:
        await storage.messages.reschedule(m.id, deliver_at=deliver_at, error="e", fence=fence)
    _refused(info.value, "deliver_at")
    record = (await storage.messages.inspect([m.id]))[m.id]
    assert record.message.failures == 0 and record.message.deliver_at is None
    assert await storage.messages.next_due([S1]) is None
    assert [x.id for x in await storage.messages.unprocessed([S1], limit=5)] == [m.id]


@pytest.mark.parametrize("error", ["boom\x00", "\ud800"])
async def test_reschedule_refuses_an_error_text_no_backend_can_store(
    storage: Storage, error: str
) -> None:
    fence = Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])
    m = msg()
    await storage.messages.save_request(m)
    with pytest.raises(ClusterError) as info:
        await storage.messages.reschedule(m.id, deliver_at=0, error=error, fence=fence)
    _refused(info.value, "error")
    assert (await storage.messages.inspect([m.id]))[m.id].message.failures == 0


@pytest.mark.parametrize("key", ["k\x00", "\ud800", "k" * 2049])
async def test_state_keys_outside_the_limits_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ClusterError) as info:
        await storage.state.set(key, b"v", expected_version=None)
    _refused(info.value, "key")
    with pytest.raises(ClusterError) as info:
        await storage.state.get(key)
    _refused(info.value, "key")
    assert await storage.state.set("ok", b"v", expected_version=None) == 1


@pytest.mark.parametrize("text", ["A\x00", "\ud800"])
async def test_listing_refuses_names_no_backend_can_store(storage: Storage, text: str) -> None:
    with pytest.raises(ClusterError) as info:
        await storage.messages.list_messages(text)
    _refused(info.value, "entity_type")
    with pytest.raises(ClusterError) as info:
        await storage.messages.list_messages("Account", tag=text)
    _refused(info.value, "tag")


BAD_SHARDS: list[tuple[str, Any]] = [
    ("not a collection", 5), ("a string", "default:1"), ("not a shard", [1]),
    ("shard 0", [ShardId("default", 0)]), ("beyond int4", [ShardId("default", 2**31)]),
    ("NUL in the group", [ShardId("d\x00", 1)]),
]


@pytest.mark.parametrize(("label", "shards"), BAD_SHARDS, ids=[b[0] for b in BAD_SHARDS])
async def test_shard_arguments_are_refused(storage: Storage, label: str, shards: Any) -> None:
    m = msg()
    await storage.messages.save_request(m)
    for call in (lambda: storage.messages.unprocessed(shards, limit=5),
                 lambda: storage.messages.next_due(shards),
                 lambda: storage.messages.reset_shards(shards)):
        with pytest.raises(ClusterError) as info:
            await call()
        _refused(info.value, "shards")
    assert [x.id for x in await storage.messages.unprocessed([S1], limit=5)] == [m.id]


@pytest.mark.parametrize("limit", [-1, True, 2.5, None, "5"])
async def test_row_limits_are_refused(storage: Storage, limit: Any) -> None:
    for call in (lambda: storage.messages.unprocessed([S1], limit=limit),
                 lambda: storage.messages.list_messages("Account", limit=limit)):
        with pytest.raises(ClusterError) as info:
            await call()
        _refused(info.value, "limit")


@pytest.mark.parametrize("request_id", [0, -1, 2**63, None, "1", 1.5])
async def test_single_message_ids_are_refused(storage: Storage, request_id: Any) -> None:
    for call in (lambda: storage.messages.get(request_id),
                 lambda: storage.messages.reset_request(request_id),
                 lambda: storage.messages.replies_for([request_id])):
        with pytest.raises(ClusterError) as info:
            await call()
        _refused(info.value, "request_id")
    if request_id is not None:  # None: no paging
        with pytest.raises(ClusterError) as info:
            await storage.messages.list_messages("Account", before_id=request_id)
        _refused(info.value, "before_id")


@pytest.mark.parametrize("address", ["Account/e1", None, _addr(entity_id="e\x00"),
                                     _addr(entity_type=""), _addr(shard=ShardId("d", 0))])
async def test_clear_address_refuses_an_address_no_message_can_have(
    storage: Storage, address: Any
) -> None:
    m = msg()
    await storage.messages.save_request(m)
    with pytest.raises(ClusterError) as info:
        await storage.messages.clear_address(address)
    _refused(info.value)
    assert set(await storage.messages.inspect([m.id])) == {m.id}


@pytest.mark.parametrize(("field", "reply", "epoch"), [
    ("request_id", 0, 1), ("request_id", -1, 1), ("request_id", 2**64, 1),
    ("fence.epoch", None, -1), ("fence.epoch", None, 2**63), ("fence.epoch", None, math.nan),
])
async def test_completion_writes_refuse_ids_and_epochs_out_of_range(
    storage: Storage, field: str, reply: int | None, epoch: Any
) -> None:
    held = (await storage.runners.acquire(RUNNER_A, [S1]))[S1]
    m = msg()
    await storage.messages.save_request(m)
    request_id = m.id if reply is None else reply
    fence = Fence(S1, held if epoch == 1 else epoch)
    for call in (lambda: storage.messages.save_reply(Reply(request_id, b"r"), fence),
                 lambda: storage.messages.reschedule(request_id, deliver_at=0, error="e",
                                                     fence=fence)):
        with pytest.raises(ClusterError) as info:
            await call()
        _refused(info.value, field)
    if field == "fence.epoch":
        with pytest.raises(ClusterError) as info:
            await storage.state.set("k", b"v", expected_version=None, fence=fence)
        _refused(info.value, field)
    assert (await storage.messages.inspect([m.id]))[m.id].reply is None


@pytest.mark.parametrize("version", [0, -1, 2**64, "1", 1.0, True])
async def test_state_versions_out_of_range_are_refused(storage: Storage, version: Any) -> None:
    assert await storage.state.set("k", b"v", expected_version=None) == 1
    for call in (lambda: storage.state.set("k", b"w", expected_version=version),
                 lambda: storage.state.delete("k", expected_version=version)):
        with pytest.raises(ClusterError) as info:
            await call()
        _refused(info.value, "expected_version")
    stored = await storage.state.get("k")
    assert stored is not None and stored.value == b"v"


async def test_counting_refuses_a_name_no_backend_can_store(storage: Storage) -> None:
    with pytest.raises(ClusterError) as info:
        await storage.messages.count_messages("A\x00")
    _refused(info.value, "entity_type")


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
