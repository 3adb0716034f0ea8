"""Singletons on the in-memory TestCluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

import covey
from covey.core import TestClock
from covey.singletons import SingletonContext
from covey.testing import TestCluster


class Counter(BaseModel):
    count: int = 0


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Recorder:
    """Tracks where instances run and whether two ever overlap."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.overlaps = 0
        self.starts: list[tuple[str, int, bool]] = []

    def singleton(self) -> Callable[[SingletonContext[Counter]], Awaitable[None]]:
        async def run(ctx: SingletonContext[Counter]) -> None:
            ctx_now = covey.current_context()
            me = str(ctx_now.cluster.runner_id)
            self.starts.append((me, ctx.state.count, ctx_now.cluster.is_leader))
            if self.active:
                self.overlaps += 1
            self.active.add(me)
            try:
                while True:
                    ctx.state.count += 1
                    await ctx.save_state()
                    ctx.beat()
                    await asyncio.sleep(0.01)
            finally:
                self.active.discard(me)

        return run


async def test_runs_once_and_moves_with_its_state_when_the_runner_dies() -> None:
    rec = Recorder()

    def configure(cluster: covey.Cluster) -> None:
        cluster.singleton("reconciler", state=Counter, expected_interval=1.0)(rec.singleton())

    async with TestCluster(runners=3, configure=configure) as tc:
        await until(lambda: len(rec.active) == 1 and rec.starts[-1][1] >= 0)
        first_runner = rec.starts[0][0]
        assert rec.starts[0][2] is True  # is_leader inside a singleton
        hosts = [i for i, r in enumerate(tc.runners) if r.singletons.running()]
        assert len(hosts) == 1 and str(tc.runners[hosts[0]].address) == first_runner
        await until(lambda: tc.storage.state._values.get(  # type: ignore[attr-defined]
            "covey.singleton/reconciler") is not None and rec.active and len(rec.starts) == 1
            and tc.storage.state._values["covey.singleton/reconciler"].version >= 6)
        await tc.kill(hosts[0])
        await until(lambda: len(rec.starts) == 2 and len(rec.active) == 1)
        runner, count, _ = rec.starts[1]
        assert runner != first_runner
        assert count >= 5  # resumed from the saved state, not from zero
        assert rec.overlaps == 0
        health = await tc.runners[0].singleton_health()
        assert health["reconciler"].healthy


async def test_graceful_handover_never_overlaps() -> None:
    rec = Recorder()

    def configure(cluster: covey.Cluster) -> None:
        cluster.singleton("leader", state=Counter)(rec.singleton())

    async with TestCluster(runners=2, configure=configure) as tc:
        await until(lambda: len(rec.active) == 1)
        for _ in range(3):
            host = next(i for i, r in enumerate(tc.runners) if r.singletons.running())
            await tc.stop_runner(host)
            await tc.add_runner()
            await until(lambda: len(rec.active) == 1)
        assert rec.overlaps == 0
        counts = [c for _, c, _ in rec.starts]
        assert counts == sorted(counts)  # each start resumed from the last saved state


async def test_crashing_singleton_restarts_with_backoff() -> None:
    runs: list[int] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.singleton("flaky")
        async def flaky(ctx: SingletonContext[None]) -> None:
            runs.append(ctx.attempt)
            if ctx.attempt < 2:
                raise RuntimeError("boom")
            await asyncio.Event().wait()

    clock = TestClock()
    async with TestCluster(runners=1, configure=configure, clock=clock) as tc:
        await until(lambda: runs == [0])
        await clock.advance(0.4)  # before the first backoff (0.25-0.5 s) can end: maybe
        await clock.advance(1.0)
        await until(lambda: len(runs) >= 2)
        await clock.advance(2.0)
        await until(lambda: runs == [0, 1, 2])
        assert tc.runners[0].singletons.restarts["flaky"] == 2


async def test_dead_mans_switch_reports_a_silent_singleton() -> None:
    def configure(cluster: covey.Cluster) -> None:
        @cluster.singleton("silent", expected_interval=5.0)
        async def silent(ctx: SingletonContext[None]) -> None:
            ctx.beat()
            await asyncio.Event().wait()  # never beats again

    clock = TestClock()
    async with TestCluster(runners=1, configure=configure, clock=clock) as tc:
        cluster = tc.runners[0]
        await until(lambda: cluster.singletons.running() == ["silent"])
        await until(lambda: tc.storage.state._values.get(  # type: ignore[attr-defined]
            "covey.singleton-beat/silent") is not None)
        await clock.advance(9.0)  # within twice the expected interval
        assert (await cluster.singleton_health())["silent"].healthy
        await clock.advance(2.0)  # now silent for 11 s > 2 x 5 s
        health = (await cluster.singleton_health())["silent"]
        assert not health.healthy and health.running_here


async def test_a_stale_owner_cannot_overwrite_state() -> None:
    from covey.core import FencedOut
    from covey.storage import Fence

    async with TestCluster(runners=1) as tc:
        store = tc.storage
        shard = covey.ShardId("default", 1)
        owner = tc.runners[0].sharding
        epoch = owner.owned[shard]
        await store.state.set("covey.singleton/x", b"1", expected_version=None,
                              fence=Fence(shard, epoch))
        try:
            await store.state.set("covey.singleton/x", b"2", expected_version=1,
                                  fence=Fence(shard, epoch - 1))
        except FencedOut:
            pass
        else:
            raise AssertionError("a stale epoch wrote state")
