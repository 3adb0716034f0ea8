"""Workflow signal latency: ``cluster.send`` in one process -> ``recv`` returning in a runner.

Two runners of ``bench.apps.workflow_bench_app`` on a scratch PostgreSQL
database (300 shards, library defaults); the bench process is a client-only
cluster member, so every signal crosses processes (bench -> the runner that
owns the workflow). Signals are sent one at a time: the bench waits for the
workflow's event ``got<round>`` before the next send, so the runners are idle
at each send. The workflow takes ``time.time()`` on the line right after
``recv`` returned and journals it with a step (with its pid); the bench
compares it with its own ``time.time()`` taken before the ``send`` call (same
machine, same clock).

A ``recv`` waits in the runner's memory for up to ``IN_PROCESS_WAIT`` (5 s)
and then suspends the execution (journal state ``waiting``, the start message
rescheduled); a signal to a suspended execution runs it again from its
journal. The two paths are measured apart:

* ``p50_ms`` / ``p99_ms`` / ``max_ms`` / ``count``: **suspended** executions.
  ``bench.signal`` executions with one ``recv`` each (500; 200 with
  ``--quick``, plus 20 / 10 warm-up sends not counted) are started together
  and left until every one is ``waiting``; the bench checks the state again
  right before each send.
* ``live_p50_ms`` / ``live_p99_ms`` / ``live_count``: **live** executions.
  ``LIVE_WORKFLOWS`` executions, one after the other, loop over ``recv``
  (50 rounds; 20 with ``--quick``); after each round the bench
  waits until the journal shows the next ``recv`` waiting (still in memory,
  well under 5 s) and sends right away; round 0 is a warm-up.
* ``send_p50_ms`` / ``live_send_p50_ms``: the ``send`` call alone (it returns
  once the owner has stored the signal).
* ``samples_per_runner``: counted samples whose receipt ran on each runner.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import covey

from ._runners import caller_config, log, percentile, scratch_database, server_settings
from .workflow_throughput import workflow_cluster

TARGETS = {"p50_ms": 10.0}
EVENT_TIMEOUT = 10.0
LIVE_WORKFLOWS = 10


def ms(samples: list[float], q: float) -> float:
    return round(percentile(samples, q) * 1000, 2)


#: how long the runtime holds a wait in memory before it suspends the execution
IN_MEMORY_WAIT = 5.0


async def wait_suspended(caller: covey.Cluster, workflow_id: str, timeout: float = 60) -> None:
    """Until the execution is suspended: its journal state is ``waiting`` (from the
    wait's start) and its ``recv`` has waited past the runtime's in-memory wait (5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await caller.workflows.handle(workflow_id).status()
        if status.state == "waiting":
            waits = [e.at for e in await caller.workflows.journal(workflow_id)
                     if e.kind == "recv" and e.status == "waiting" and e.at is not None]
            if waits and time.time() - max(waits) > IN_MEMORY_WAIT + 0.5:
                return
        if status.state not in ("pending", "running", "waiting"):
            raise RuntimeError(f"{workflow_id} is {status.state}: {status.error}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workflow_id} not waiting after {timeout} s ({status.state})")
        await asyncio.sleep(0.05)


async def wait_in_recv(caller: covey.Cluster, workflow_id: str, recvs: int,
                       timeout: float = 10) -> None:
    """Until the journal shows the ``recvs``-th ``recv`` waiting."""
    deadline = time.monotonic() + timeout
    while True:
        journal = await caller.workflows.journal(workflow_id)
        if (sum(1 for e in journal if e.kind == "recv") == recvs
                and journal[-1].kind == "recv" and journal[-1].status == "waiting"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workflow_id}: recv #{recvs} not waiting after {timeout} s")
        await asyncio.sleep(0.002)


class Samples:
    """Counted samples: receipt latency, send call time, receipts per runner pid."""

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.send: list[float] = []
        self.pids: dict[int, int] = {}

    async def one(self, caller: covey.Cluster, workflow_id: str, r: int, count: bool) -> None:
        before = time.time()
        await caller.send(workflow_id, "go", {"round": r}, idempotency_key=f"{workflow_id}/{r}")
        sent = time.time()
        stamp = await caller.get_event(workflow_id, f"got{r}", timeout=EVENT_TIMEOUT)
        if stamp is None:
            raise TimeoutError(f"{workflow_id} round {r}: no event in {EVENT_TIMEOUT} s")
        if count:
            self.latency.append(float(stamp["got"]) - before)
            self.send.append(sent - before)
            pid = int(stamp["pid"])
            self.pids[pid] = self.pids.get(pid, 0) + 1


async def suspended(caller: covey.Cluster, signal: covey.Workflow, count: int,
                    warmup: int, samples: Samples) -> None:
    ids = [f"sus{n}" for n in range(warmup + count)]
    handles = await asyncio.gather(*(caller.start(signal, 1, workflow_id=wid) for wid in ids))
    log(f"{len(ids)} workflows started; waiting until every one is suspended...")
    for wid in ids:
        await wait_suspended(caller, wid)
    log(f"{warmup} warm-up sends, then {count} sends to suspended workflows...")
    for n, wid in enumerate(ids):
        await wait_suspended(caller, wid)
        await samples.one(caller, wid, 0, count=n >= warmup)
    outcomes = await asyncio.gather(*(h.result(timeout=30.0) for h in handles))
    if any(o != 1 for o in outcomes):
        raise RuntimeError(f"unexpected results: {sorted(set(outcomes))}")


async def live(caller: covey.Cluster, signal: covey.Workflow, rounds: int,
               samples: Samples) -> None:
    log(f"{LIVE_WORKFLOWS} workflows one after the other, each 1 warm-up round, then "
        f"{rounds} rounds of sends to the live workflow...")
    handles = []
    for w in range(LIVE_WORKFLOWS):
        # started only now, so the others do not suspend (and write) meanwhile
        wid = f"live{w}"
        handles.append(await caller.start(signal, rounds + 1, workflow_id=wid))
        for r in range(rounds + 1):
            await wait_in_recv(caller, wid, r + 1)
            await samples.one(caller, wid, r, count=r > 0)
    outcomes = await asyncio.gather(*(h.result(timeout=30.0) for h in handles))
    if any(o != rounds + 1 for o in outcomes):
        raise RuntimeError(f"unexpected results: {sorted(set(outcomes))}")


async def measure(url: str, count: int, warmup: int, live_rounds: int) -> dict[str, Any]:
    parked, awake = Samples(), Samples()
    async with workflow_cluster(url) as (runners, caller, declared):
        await suspended(caller, declared["signal"], count, warmup, parked)
        await live(caller, declared["signal"], live_rounds, awake)
        runner_pids = [r.process.pid for r in runners]
    pids = {p: parked.pids.get(p, 0) + awake.pids.get(p, 0)
            for p in set(parked.pids) | set(awake.pids)}
    result = {
        "count": len(parked.latency), "warmup": warmup,
        "p50_ms": ms(parked.latency, 0.5), "p99_ms": ms(parked.latency, 0.99),
        "max_ms": ms(parked.latency, 1.0),
        "send_p50_ms": ms(parked.send, 0.5), "send_p99_ms": ms(parked.send, 0.99),
        "live_count": len(awake.latency), "live_workflows": LIVE_WORKFLOWS,
        "live_p50_ms": ms(awake.latency, 0.5), "live_p99_ms": ms(awake.latency, 0.99),
        "live_max_ms": ms(awake.latency, 1.0),
        "live_send_p50_ms": ms(awake.send, 0.5), "live_send_p99_ms": ms(awake.send, 0.99),
        "samples_per_runner": [pids.get(pid, 0) for pid in runner_pids],
        "samples_elsewhere": sum(n for pid, n in pids.items() if pid not in runner_pids),
    }
    log(f"  {result}")
    return result


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url:
        result = await (measure(url, 200, 10, 20) if quick else measure(url, 500, 20, 50))
    result.update(scenario="workflow-signal", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  targets=TARGETS, clock="time.time() in both processes, same machine")
    return result
