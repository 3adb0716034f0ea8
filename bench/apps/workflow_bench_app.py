"""The workflows application of the ``workflow-*`` benchmarks.

``python -m covey run bench.apps.workflow_bench_app:cluster`` (cwd = repo root,
the repo root on ``PYTHONPATH``), configured by ``COVEY_*`` variables. The bench
process (client-only) calls :func:`declare` on its own cluster, so that it can
start the same workflows and type their results.

* ``bench.noop3`` (``workflow-throughput``, ``workflow-latency``): three
  journaled steps, each an async no-op returning a small int; the result is
  the payload + 3, so the bench checks every result.
* ``bench.signal`` (``workflow-signal``): ``rounds`` times, ``recv("go")``, then
  ``time.time()`` taken on the line right after ``recv`` returned, journaled by
  a step (so a replay of the workflow keeps the first value) together with the
  runner's pid, and published as the event ``got<round>``. The sender compares
  it with its own ``time.time()`` taken before ``cluster.send``: same machine,
  same clock.
* ``bench.sleep`` (``workflow-sleep``): a step journals ``time.time()`` and the
  runner's pid (the sleep's start), ``ctx.sleep(seconds)``, then a step
  journals ``time.time()`` and the pid again (the wake), with the
  ``time.time()`` taken on the line right after ``ctx.sleep`` returned
  (``woke``: when the timer let the body go on, before the wake step's journal
  write). The result is ``{"start": {"at", "pid"}, "wake": {"at", "pid",
  "woke"}}``; a replay on another runner (after a SIGKILL) keeps the start
  stamp of the first execution.

All use the library defaults (step retry: one attempt; no timeouts).
"""

from __future__ import annotations

import os
import time

import covey

NOOP3 = "bench.noop3"
SIGNAL = "bench.signal"
SLEEP = "bench.sleep"


async def bump(n: int) -> int:
    """A step that does nothing but return a small value."""
    return n + 1


async def receipt(got: float) -> dict[str, float]:
    """A step that journals the receipt time taken in the workflow body (first
    execution) and the pid of the runner that ran it."""
    return {"got": got, "pid": float(os.getpid())}


async def sleep_start() -> dict[str, float]:
    """A step that journals when it ran and on which runner (pid)."""
    return {"at": time.time(), "pid": float(os.getpid())}


async def sleep_wake(woke: float) -> dict[str, float]:
    """A step that journals when it ran, on which runner (pid), and ``woke``
    (taken in the workflow body right after the sleep returned)."""
    return {"at": time.time(), "pid": float(os.getpid()), "woke": woke}


def declare(cluster: covey.Cluster) -> dict[str, covey.Workflow]:
    @cluster.workflow(NOOP3, version=1)
    async def noop3(ctx: covey.WorkflowContext, n: int) -> int:
        a = await ctx.step(bump, n, name="one")
        b = await ctx.step(bump, a, name="two")
        c: int = await ctx.step(bump, b, name="three")
        return c

    @cluster.workflow(SIGNAL, version=1)
    async def signal(ctx: covey.WorkflowContext, rounds: int) -> int:
        for i in range(rounds):
            await ctx.recv("go")
            # Not deterministic by itself: the step journals it, so a replay
            # returns the value of the first execution whatever is passed here.
            got = time.time()
            stamp = await ctx.step(receipt, got, name="receipt")
            await ctx.set_event(f"got{i}", stamp)
        return rounds

    @cluster.workflow(SLEEP, version=1)
    async def sleep(ctx: covey.WorkflowContext, seconds: float) -> dict[str, dict[str, float]]:
        start = await ctx.step(sleep_start, name="start")
        await ctx.sleep(seconds)
        woke = time.time()  # journaled by the step: a replay keeps the first value
        wake = await ctx.step(sleep_wake, woke, name="wake")
        return {"start": start, "wake": wake}

    return {"noop3": noop3, "signal": signal, "sleep": sleep}


def make_cluster() -> covey.Cluster:
    cluster = covey.Cluster.from_env()
    declare(cluster)
    return cluster


cluster = make_cluster
