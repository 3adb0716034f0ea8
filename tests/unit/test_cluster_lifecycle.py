"""A runner's lifecycle: a crashed background task stops it loudly; abort() drops it.

Every task a runner starts is owned by its supervisor, so a crash anywhere —
a sharding loop or a component's own task — stops the runner (``serve()``
returns, ``cluster.crashed`` tells why) and nothing is left running afterwards.
``abort()`` stops it at once without the graceful hand-over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

import covey
from covey.core import CoveyConfig, RunnerAddress, ShardingOptions
from covey.sharding import LocalNetwork, LocalTransport
from covey.testing import TestCluster

from ._entities import Account, Deposit

FAST = ShardingOptions(heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
                       lock_refresh_interval=0.5, poll_interval=0.5, shutdown_grace=1.0,
                       call_timeout=5.0)


class Mail(BaseModel):
    to: str


def _runner(configure: Callable[[covey.Cluster], None] | None = None) -> covey.Cluster:
    cluster = covey.Cluster(CoveyConfig(database_url="memory://", shards=4, sharding=FAST),
                            transport=LocalTransport(LocalNetwork(), RunnerAddress("runner", 1)))
    cluster.register(Account)
    if configure is not None:
        configure(cluster)
    return cluster


async def _serving(cluster: covey.Cluster) -> asyncio.Task[None]:
    ready = asyncio.Event()
    serving = asyncio.create_task(cluster.serve(on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 5)
    return serving


def _left_behind(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - before - {asyncio.current_task()}  # type: ignore[operator]


async def test_a_crashed_sharding_loop_stops_the_runner_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    cluster = _runner()
    serving = await _serving(cluster)
    assert cluster.crashed is None

    async def broken() -> None:
        raise RuntimeError("membership bug")

    cluster.sharding.refresh_membership = broken  # type: ignore[method-assign]
    cluster.sharding.wake()  # the membership loop reads now, and crashes
    await asyncio.wait_for(serving, 5)  # serve() returned: the runner left
    assert isinstance(cluster.crashed, RuntimeError)
    assert str(cluster.crashed) == "membership bug"
    assert _left_behind(before) == set()


async def test_a_crash_in_any_component_task_stops_the_runner() -> None:
    # Recording job starts is a task of the job runner, not a sharding loop: a
    # bug there used to vanish as an unretrieved task exception, the runner
    # carrying on half alive.
    before = asyncio.all_tasks()

    def configure(cluster: covey.Cluster) -> None:
        @cluster.job("mail")
        async def mail(job: covey.JobContext, msg: Mail) -> None:
            return None

    cluster = _runner(configure)

    async def broken(ids: Any) -> None:
        raise RuntimeError("start-record bug")

    cluster.storage.messages.mark_started = broken  # type: ignore[method-assign]
    serving = await _serving(cluster)
    await cluster.jobs.submit("mail", {"to": "a@x"})
    await asyncio.wait_for(serving, 5)
    assert isinstance(cluster.crashed, RuntimeError)
    assert _left_behind(before) == set()


async def test_abort_stops_at_once_without_handing_over() -> None:
    async with TestCluster(Account, runners=2) as tc:
        await tc.client(Account, "acct-1").deposit(Deposit(txn_id="t1", amount=1))
        # the owner of acct-1; the harness must not drive it any more
        victim = tc.runners.pop(tc.owner_index(Account, "acct-1"))
        address = victim.address
        assert address is not None
        held = set(victim.sharding.owned)
        assert held
        await victim.abort()
        assert victim.crashed is None
        # no goodbye: still registered, and its shard locks still held
        live = await tc.storage.runners.live_runners(max_age=60)
        assert address in [r.address for r in live]
        peer = tc.runners[0]
        assert set(await tc.storage.runners.acquire(peer.address, held)) == set()  # type: ignore[arg-type]
        await victim.stop()  # nothing left to stop: no hand-over after all
        assert address in [r.address for r in await tc.storage.runners.live_runners(max_age=60)]
        # once its leases are gone (the TTL) the peer takes everything over
        await tc.storage.runners.expire(address)
        await tc.settle()
        assert held <= set(peer.sharding.owned)
        assert await tc.client(Account, "acct-1").balance_of() == 0  # volatile state died


async def test_abort_makes_serve_return_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    cluster = _runner()
    serving = await _serving(cluster)
    await cluster.abort()
    await asyncio.wait_for(serving, 5)
    assert cluster.crashed is None
    assert _left_behind(before) == set()
