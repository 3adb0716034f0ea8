"""The entity application the benchmark runners serve.

``python -m covey run bench.apps.bench_app:cluster`` (cwd = repo root, the repo
root on ``PYTHONPATH``), configured by ``COVEY_*`` variables.

``Bench`` has one RPC per benchmarked path: a volatile echo, a persisted write
(with and without a primary key) and ``hold``, a persisted RPC that stays
pending while it runs on the runner it names (the failover/handoff victim) and
returns at once anywhere else. On a graceful stop the held handlers return, so a
SIGTERM handoff drains them instead of waiting out the shutdown grace.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel

import covey

log = logging.getLogger("bench.app")


class Put(BaseModel):
    key: str
    data: str = "x" * 32


class Hold(BaseModel):
    block_on: str  # "HOST:PORT" of the runner on which the handler stays pending


class Bench(covey.Entity, type="Bench"):
    count: int = 0

    @covey.rpc
    async def echo(self, text: str) -> str:
        return text

    @covey.rpc(persisted=True)
    async def put(self, cmd: Put) -> int:
        self.count += 1
        return self.count

    @covey.rpc(persisted=True, primary_key=lambda cmd: cmd.key)
    async def put_keyed(self, cmd: Put) -> int:
        self.count += 1
        return self.count

    @covey.rpc(persisted=True)
    async def hold(self, cmd: Hold) -> str:
        here = str(self.ctx.runner)
        log.info("hold %s on %s (blocks here: %s)", self.ctx.entity_id, here, here == cmd.block_on)
        # polled: covey has no shutdown hook an app could wait on
        while here == cmd.block_on and not _stopping():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return here


_cluster: covey.Cluster | None = None


def _stopping() -> bool:
    return _cluster is not None and _cluster.sharding.shutting_down


def make_cluster() -> covey.Cluster:
    global _cluster
    _cluster = covey.Cluster.from_env()
    _cluster.register(Bench)
    return _cluster


cluster = make_cluster
