"""Three real runner processes on PostgreSQL: routing, SIGKILL, SIGTERM, fencing."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

import covey
from covey.core import EntityError, Reason

from ._harness import RunnerProcess, wait_until
from .app import Apply, Ledger

pytestmark = pytest.mark.acceptance


async def _live_addresses(client: covey.Cluster) -> set[str]:
    await client.sharding.refresh_membership()
    return {str(r.address) for r in client.sharding.live}


async def _three(start, client: covey.Cluster) -> list[RunnerProcess]:  # type: ignore[no-untyped-def]
    procs = [start() for _ in range(3)]
    wanted = {p.address for p in procs}
    await wait_until(_all_owned(client, wanted), timeout=30)
    return procs


def _all_owned(client: covey.Cluster, wanted: set[str]):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await _live_addresses(client) == wanted
    return check


async def test_messages_reach_entities_on_other_runners(start, client: covey.Cluster) -> None:  # type: ignore[no-untyped-def]
    procs = await _three(start, client)
    seen = {await client.client(Ledger, f"e{i}").where() for i in range(60)}
    assert seen == {p.address for p in procs}
    # sent from inside one runner to an entity another runner owns
    pairs = [await client.client(Ledger, f"from{i}").forward(f"to{i}") for i in range(40)]
    crossing = [p for p in pairs if p[0] != p[1]]
    assert crossing, pairs
    assert {p[1] for p in pairs} <= {p.address for p in procs}


async def test_sigkill_during_2000_persisted_messages(  # type: ignore[no-untyped-def]
    start, client: covey.Cluster, fresh_pg_database: str
) -> None:
    procs = await _three(start, client)
    total, done = 2000, 0
    queue = list(range(total))
    random.Random(7).shuffle(queue)
    failures: list[BaseException] = []

    async def sender() -> None:
        nonlocal done
        while queue:
            n = queue.pop()
            try:
                await client.client(Ledger, f"acct-{n % 97}", timeout=60).apply(
                    Apply(key=f"m{n}"))
                done += 1
            except Exception as exc:
                failures.append(exc)

    senders = [asyncio.create_task(sender()) for _ in range(48)]
    await wait_until(lambda: done >= 500, timeout=60, interval=0.01)
    victim = procs[1]
    victim.kill()
    await asyncio.gather(*senders)
    assert failures == []
    assert done == total
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        effects = await conn.fetchval("SELECT count(*) FROM app_effects")
        runs = await conn.fetchval("SELECT count(*) FROM app_runs")
        processed = await conn.fetchval(
            "SELECT count(*) FROM covey.messages WHERE processed AND tag = 'apply'")
        unprocessed = await conn.fetchval(
            "SELECT count(*) FROM covey.messages WHERE NOT processed")
    finally:
        await conn.close()
    assert effects == total  # every effect exactly once (unique key)
    assert processed == total and unprocessed == 0  # every message completed once in storage
    assert runs >= total  # re-runs only for messages the killed runner had not completed
    print(f"SIGKILL: {total} messages, {runs - total} re-runs after the kill")


async def test_rolling_sigterm_restart_loses_and_fails_nothing(  # type: ignore[no-untyped-def]
    start, client: covey.Cluster, fresh_pg_database: str
) -> None:
    procs = await _three(start, client)
    stop = asyncio.Event()
    failures: list[BaseException] = []
    persisted_ok: set[str] = set()
    calls = 0

    async def load(worker: int) -> None:
        nonlocal calls
        n = 0
        while not stop.is_set():
            n += 1
            entity = client.client(Ledger, f"r{(worker * 31 + n) % 50}", timeout=60)
            try:
                if n % 2:
                    assert await entity.echo("x") == "x"
                else:
                    key = f"w{worker}-{n}"
                    await entity.apply(Apply(key=key))
                    persisted_ok.add(key)
                calls += 1
            except Exception as exc:
                failures.append(exc)

    workers = [asyncio.create_task(load(w)) for w in range(16)]
    for old in list(procs):
        await wait_until(lambda: calls > 200, timeout=30)  # noqa: B023 - reads the live count
        assert old.terminate(timeout=30) == 0
        new = start()
        wanted = {p.address for p in procs if p is not old} | {new.address}
        procs = [p for p in procs if p is not old] + [new]
        await wait_until(_all_owned(client, wanted), timeout=30)
        calls = 0
    stop.set()
    await asyncio.gather(*workers)
    assert failures == []
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        effects = {r["key"] for r in await conn.fetch("SELECT key FROM app_effects")}
        unprocessed = await conn.fetchval(
            "SELECT count(*) FROM covey.messages WHERE NOT processed")
    finally:
        await conn.close()
    assert persisted_ok <= effects and unprocessed == 0


async def test_killed_lock_connection_fences_and_recovers(  # type: ignore[no-untyped-def]
    start, client: covey.Cluster, fresh_pg_database: str
) -> None:
    procs = await _three(start, client)
    victim = procs[0]
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        total, done = 600, 0
        failures: list[BaseException] = []

        async def sender(offset: int) -> None:
            nonlocal done
            for n in range(offset, total, 24):
                try:
                    await client.client(Ledger, f"f{n % 40}", timeout=60).apply(
                        Apply(key=f"f{n}"))
                    done += 1
                except Exception as exc:
                    failures.append(exc)

        senders = [asyncio.create_task(sender(i)) for i in range(24)]
        await wait_until(lambda: done >= 100, timeout=60, interval=0.01)
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1", f"covey-lock:{victim.address}")
        assert killed == 1
        await asyncio.gather(*senders)
        assert failures == [] and done == total
        # the runner noticed, stopped the shards, and took them again by itself
        await wait_until(lambda: any("lost the locks" in line or "fenced out" in line
                                     for line in victim.lines), timeout=30)

        async def lock_back() -> bool:
            return bool(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                f"covey-lock:{victim.address}"))

        await wait_until(lock_back, timeout=30)
        assert victim.process.poll() is None
        effects = await conn.fetchval("SELECT count(*) FROM app_effects")
        processed = await conn.fetchval(
            "SELECT count(*) FROM covey.messages WHERE processed AND tag = 'apply'")
        assert effects == total and processed == total
    finally:
        await conn.close()


async def test_bad_input_gets_typed_errors_and_runners_keep_serving(  # type: ignore[no-untyped-def]
    start, client: covey.Cluster, fresh_pg_database: str
) -> None:
    from covey.core import SerializationError

    from .conftest import client_config

    await _three(start, client)
    with pytest.raises(EntityError) as info:
        await client.send_raw("NoSuchType", "x", "where", b"", timeout=5)
    assert info.value.reason is Reason.UNKNOWN_ENTITY_TYPE
    with pytest.raises(EntityError) as info:
        await client.send_raw("Ledger", "x", "no_such_rpc", b"", timeout=5)
    assert info.value.reason is Reason.UNKNOWN_RPC
    with pytest.raises(SerializationError):
        await client.send_raw("Ledger", "x", "echo", b"\xc1\xc1", timeout=5)
    # oversized frame: far above the runners' 16 MiB frame limit
    with pytest.raises(covey.ClusterError) as big:
        await client.client(Ledger, "x", timeout=5).echo("y" * (17 * 1024 * 1024))
    assert big.value.reason is Reason.FRAME_TOO_LARGE
    # wrong secret
    intruder = covey.Cluster(client_config(fresh_pg_database, cluster_secret="wrong"),
                             client_only=True)
    async with intruder:
        with pytest.raises(covey.ClusterError) as denied:
            await intruder.send_raw("Ledger", "x", "where", b"", timeout=5)
        assert denied.value.reason is Reason.AUTH_FAILED
    # everyone still serves
    for i in range(30):
        assert await client.client(Ledger, f"ok{i}").echo("fine") == "fine"


async def test_send_inside_the_application_transaction_wakes_the_owner_at_commit(  # type: ignore[no-untyped-def]
    start, client: covey.Cluster, fresh_pg_database: str
) -> None:
    # a long safety poll: only the NOTIFY at commit can deliver the message quickly
    procs = [start(COVEY_SHARDING_POLL_INTERVAL="120") for _ in range(2)]
    await wait_until(_all_owned(client, {p.address for p in procs}), timeout=30)
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY)")
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES ('o1')")
            sent = await client.client(Ledger, "tx-acct", transaction=conn).apply(
                Apply(key="order-o1"))
            assert sent is None
        committed_at = asyncio.get_running_loop().time()

        async def applied() -> bool:
            return bool(await conn.fetchval(
                "SELECT count(*) FROM app_effects WHERE key = 'order-o1'"
            )) if await conn.fetchval("SELECT to_regclass('app_effects')") else False

        await wait_until(applied, timeout=10, interval=0.01)
        assert asyncio.get_running_loop().time() - committed_at < 2.0  # woken, not polled
        # a rolled-back transaction leaves no message and no effect
        tx = conn.transaction()
        await tx.start()
        await client.client(Ledger, "tx-acct", transaction=conn).apply(Apply(key="order-o2"))
        await tx.rollback()  # the application changes its mind
        await asyncio.sleep(0.5)
        assert await conn.fetchval(
            "SELECT count(*) FROM covey.messages WHERE primary_key = 'order-o2'") == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM app_effects WHERE key = 'order-o2'") == 0
    finally:
        await conn.close()
