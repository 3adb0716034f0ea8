"""Durable sleep: 200 workflows sleeping 1 s across two runners, one SIGKILLed.

Two runners of ``bench.apps.workflow_bench_app`` on a scratch PostgreSQL
database (300 shards, library defaults); the bench process is a client-only
cluster member. After a few warm-up ``bench.noop3`` workflows, ``SLEEPERS``
(200) ``bench.sleep`` executions are started together, each with its own
``workflow_id`` (they hash to shards of both runners). Each journals
``time.time()`` and its runner's pid in a step (the sleep's start), sleeps
``NAP`` (1 s) with ``ctx.sleep``, then journals ``time.time()`` and the pid
again in a step (the wake), with the ``time.time()`` taken in the body on the
line right after the sleep returned (``woke``). ``SETTLE`` (0.3 s) after the
start calls returned, the bench reads the journals until every execution is
asleep (start step done, sleep waiting), SIGKILLs the runner whose pid the most sleeping executions
report (it is not restarted) and waits for all results. The executions asleep
on the killed runner run again from their journal on the survivor once it owns
their shards; their start stamp is the journaled one.

lateness = wake ``at`` - (start ``at`` + ``NAP``), in ms (both stamps taken in
runner processes on this machine's clock; the sleep's end is not a journal
write of its own: a run again finds its deadline passed).

* ``late_p50_ms`` / ``late_p99_ms`` / ``late_max_ms`` / ``live_count``: the
  executions whose start and wake pid are the surviving runner (they never saw
  the kill, except as load on the survivor).
* ``timer_late_p50_ms`` / ``timer_late_p99_ms`` (the same live executions):
  ``woke`` - (start ``at`` + ``NAP``): when the timer let the body go on.
  ``late`` minus this is the wake step's own start.
* ``moved_count`` / ``moved_late_p50_ms`` / ``moved_late_max_ms``: started on
  the killed runner, woke on the survivor (informative: failover time; it
  shows only when the survivor takes them over after their timers came due,
  otherwise they wake in the same burst as the live ones).
* ``woke_before_kill``: executions that woke on the killed runner before the
  kill (0 unless the run was too slow to kill within the sleep); ``other``:
  any other start/wake pid combination (should be 0).
* ``all_woke``: every one of the 200 returned a result; ``errors``: start or
  result calls that raised, plus malformed results.
* ``start_spread_ms``: first to last start stamp of the 200: the timers all
  come due within this window, so each runner wakes its sleepers in a burst.
* ``asleep_at_kill``: [on the killed runner, on the survivor];
  ``kill_after_s``: first start call -> the SIGKILL; ``ended_after_kill_s``:
  the SIGKILL -> the last result.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from typing import Any

import covey

from ._runners import Runner, caller_config, log, percentile, scratch_database, server_settings
from .workflow_throughput import workflow_cluster

SLEEPERS = 200
NAP = 1.0
SETTLE = 0.3
WARMUP = 20
ASLEEP_TIMEOUT = 10.0
RESULT_TIMEOUT = 30.0
TARGETS = {"late_p99_ms": 50.0, "all_woke": True}


def ms(samples: list[float], q: float) -> float | None:
    return round(percentile(samples, q) * 1000, 2) if samples else None


async def asleep(caller: covey.Cluster, ids: list[str]) -> dict[str, int]:
    """Workflow id -> the pid journaled by its start step, for the executions
    whose sleep is waiting."""
    gate = asyncio.Semaphore(20)

    async def journal(wid: str) -> list[covey.JournalEntry]:
        async with gate:
            return await caller.workflows.journal(wid)

    out: dict[str, int] = {}
    for wid, entries in zip(ids, await asyncio.gather(*(journal(w) for w in ids)), strict=True):
        start = next((e for e in entries if e.kind == "step" and e.status == "done"
                      and e.key.split("#")[0] == "start"), None)
        if start is not None and any(e.kind == "sleep" and e.status == "waiting"
                                     for e in entries):
            out[wid] = int(start.result["pid"])
    return out


async def wait_asleep(caller: covey.Cluster, ids: list[str]) -> dict[str, int]:
    deadline = time.monotonic() + ASLEEP_TIMEOUT
    while True:
        found = await asleep(caller, ids)
        if len(found) == len(ids):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} of {len(ids)} asleep after {ASLEEP_TIMEOUT} s")
        await asyncio.sleep(0.02)


async def result_of(handle: covey.WorkflowHandle) -> dict[str, Any] | None:
    try:
        value = await handle.result(timeout=RESULT_TIMEOUT)
        return {"start": (float(value["start"]["at"]), int(value["start"]["pid"])),
                "wake": (float(value["wake"]["at"]), int(value["wake"]["pid"])),
                "woke": float(value["wake"]["woke"])}
    except Exception as exc:  # counted and reported, the run goes on
        log(f"  {handle.id}: {type(exc).__name__}: {exc}")
        return None


async def sleepers(caller: covey.Cluster, workflows: dict[str, covey.Workflow],
                   runners: list[Runner]) -> dict[str, Any]:
    ids = [f"sleep-{n:03d}" for n in range(SLEEPERS)]
    log(f"{WARMUP} warm-up workflows, then {SLEEPERS} sleepers of {NAP} s...")
    warm = await asyncio.gather(*(caller.start(workflows["noop3"], n, workflow_id=f"warm{n}")
                                  for n in range(WARMUP)))
    await asyncio.gather(*(h.result(timeout=RESULT_TIMEOUT) for h in warm))
    began = time.monotonic()
    handles = await asyncio.gather(*(caller.start(workflows["sleep"], NAP, workflow_id=wid)
                                     for wid in ids))
    await asyncio.sleep(SETTLE)
    pids = Counter((await wait_asleep(caller, ids)).values())
    victim = max(runners, key=lambda r: pids.get(r.process.pid, 0))
    survivor = next(r for r in runners if r is not victim)
    victim.signal(signal.SIGKILL)
    killed = time.monotonic()
    log(f"  SIGKILL {victim.process.pid} after {killed - began:.3f} s; asleep per pid: "
        f"{dict(pids)}")
    await victim.wait()
    results = await asyncio.gather(*(result_of(h) for h in handles))
    ended = time.monotonic()
    return {"results": results, "victim": victim.process.pid,
            "survivor": survivor.process.pid,
            "asleep_at_kill": [pids.get(victim.process.pid, 0),
                               pids.get(survivor.process.pid, 0)],
            "kill_after_s": round(killed - began, 3),
            "ended_after_kill_s": round(ended - killed, 3)}


def summary(run: dict[str, Any]) -> dict[str, Any]:
    victim, survivor = run["victim"], run["survivor"]
    live: list[float] = []
    timer: list[float] = []
    moved: list[float] = []
    errors = woke_before_kill = other = 0
    starts = [r["start"][0] for r in run["results"] if r is not None]
    for r in run["results"]:
        if r is None:
            errors += 1
            continue
        (start_at, start_pid), (wake_at, wake_pid) = r["start"], r["wake"]
        late = wake_at - (start_at + NAP)
        if start_pid == wake_pid == survivor:
            live.append(late)
            timer.append(r["woke"] - (start_at + NAP))
        elif start_pid == victim and wake_pid == survivor:
            moved.append(late)
        elif start_pid == wake_pid == victim:
            woke_before_kill += 1
        else:
            other += 1
    return {
        "sleepers": SLEEPERS, "nap_s": NAP,
        "all_woke": errors == 0 and len(run["results"]) == SLEEPERS,
        "errors": errors,
        "live_count": len(live),
        "late_p50_ms": ms(live, 0.5), "late_p99_ms": ms(live, 0.99), "late_max_ms": ms(live, 1.0),
        "late_min_ms": ms(live, 0.0),
        "timer_late_p50_ms": ms(timer, 0.5), "timer_late_p99_ms": ms(timer, 0.99),
        "moved_count": len(moved),
        "moved_late_p50_ms": ms(moved, 0.5), "moved_late_max_ms": ms(moved, 1.0),
        "woke_before_kill": woke_before_kill, "other": other,
        "start_spread_ms": round((max(starts) - min(starts)) * 1000, 1) if starts else None,
        "asleep_at_kill": run["asleep_at_kill"], "kill_after_s": run["kill_after_s"],
        "ended_after_kill_s": run["ended_after_kill_s"],
    }


async def measure(url: str) -> dict[str, Any]:
    async with workflow_cluster(url) as (runners, caller, workflows):
        run = await sleepers(caller, workflows, runners)
    result = summary(run)
    log(f"  {result}")
    return result


async def run(quick: bool) -> dict[str, Any]:
    # --quick runs the same thing: it takes ~15 s anyway
    settings = await server_settings()
    async with scratch_database() as url:
        result = await measure(url)
    result.update(scenario="workflow-sleep", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  targets=TARGETS, clock="time.time() in the runner processes, same machine")
    return result
