"""Singletons and cron on an in-process three-runner cluster (no database needed).

Shows a 1-second cron running once per tick across three runners, and a singleton
that keeps a counter in its saved state and moves, state and all, when its runner
is killed.

    python examples/scheduling.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import covey
from covey.testing import TestCluster


class Counter(BaseModel):
    count: int = 0


ticks: list[str] = []
lives: list[tuple[str, int]] = []


def declare(cluster: covey.Cluster) -> None:
    @cluster.cron("* * * * * *", name="heartbeat")
    async def heartbeat(tick: covey.CronTick) -> None:
        ticks.append(tick.scheduled.isoformat())

    @cluster.singleton("counter", state=Counter, expected_interval=0.5)
    async def counter(ctx: covey.SingletonContext[Counter]) -> None:
        lives.append((str(covey.current_context().cluster.runner_id), ctx.state.count))
        while True:
            ctx.state.count += 1
            await ctx.save_state()
            ctx.beat()
            await asyncio.sleep(0.1)


async def main() -> None:
    async with TestCluster(runners=3, configure=declare) as cluster:
        await asyncio.sleep(3.2)
        host = next(i for i, r in enumerate(cluster.runners) if r.singletons.running())
        print(f"singleton runs on {cluster.runners[host].address}; killing that runner")
        await cluster.kill(host)
        await asyncio.sleep(1.0)
        health = await cluster.runners[0].singleton_health()
        print(f"singleton healthy after the kill: {health['counter'].healthy}")
    print(f"cron ticks: {len(ticks)}, duplicates: {len(ticks) - len(set(ticks))}")
    for runner, count in lives:
        print(f"singleton life on {runner} started from count {count}")


if __name__ == "__main__":
    asyncio.run(main())
