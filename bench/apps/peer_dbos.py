"""The DBOS Transact side of the ``peers`` benchmark, in a process of its own.

``python -m bench.apps.peer_dbos URL TOTAL COUNT WARMUP WARM`` launches DBOS on the scratch
database URL (its system database), then measures what ``workflow-throughput``
and ``workflow-latency`` measure for covey and prints one JSON object:

* ``noop3``: three ``@DBOS.step()`` async no-ops (each returns its input + 1) in
  a ``@DBOS.workflow()``; the result is the payload + 3 and is checked.
* throughput: WARM warm-up workflows, then TOTAL, ``IN_FLIGHT`` (200)
  ``DBOS.start_workflow_async`` calls at a time, each with its own workflow id
  (``SetWorkflowID``), every handle's ``get_result()`` awaited as soon as its
  start returned. ``wf_per_s`` = completed / (first start -> last result).
* latency: WARMUP warm-up workflows, then COUNT one at a time;
  ``time.perf_counter()`` before ``start_workflow_async`` -> ``get_result()``
  returned.

DBOS is a library that runs a workflow in the process that starts it (its
documented way to run one from application code), so this one process both
starts and executes them; DBOS's defaults otherwise.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from dbos import DBOS, SetWorkflowID

IN_FLIGHT = 200


@DBOS.step()
async def bump(n: int) -> int:
    return n + 1


@DBOS.workflow()
async def noop3(n: int) -> int:
    a = await bump(n)
    b = await bump(a)
    return await bump(b)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 2)


async def run_batch(prefix: str, count: int) -> tuple[int, int, float]:
    gate = asyncio.Semaphore(IN_FLIGHT)
    completed = errors = 0

    async def one(n: int) -> None:
        nonlocal completed, errors
        try:
            async with gate:
                with SetWorkflowID(f"{prefix}-{n}"):
                    handle = await DBOS.start_workflow_async(noop3, n)
            value = await asyncio.wait_for(handle.get_result(), 120)
        except Exception as exc:  # counted and reported, the run goes on
            errors += 1
            if errors <= 3:
                print(f"  {prefix}-{n}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
        if value == n + 3:
            completed += 1
        else:
            errors += 1

    started = time.monotonic()
    await asyncio.gather(*(one(n) for n in range(count)))
    return completed, errors, time.monotonic() - started


async def measure(url: str, total: int, count: int, warmup: int,
                  warm: int) -> dict[str, Any]:
    DBOS(config={"name": "covey-peers-bench", "system_database_url": url,
                 "log_level": "WARNING"})
    DBOS.launch()
    try:
        await run_batch("warm", warm)
        completed, errors, seconds = await run_batch("wf", total)
        totals: list[float] = []
        for n in range(-warmup, count):
            before = time.perf_counter()
            with SetWorkflowID(f"lat{n}"):
                handle = await DBOS.start_workflow_async(noop3, n)
            value = await asyncio.wait_for(handle.get_result(), 30)
            if value != n + 3:
                raise RuntimeError(f"workflow lat{n} returned {value!r}")
            if n >= 0:
                totals.append(time.perf_counter() - before)
    finally:
        DBOS.destroy()
    return {"workflows": total, "completed": completed, "errors": errors,
            "seconds": round(seconds, 3), "wf_per_s": round(completed / seconds, 1),
            "count": count, "p50_ms": percentile(totals, 0.5),
            "p99_ms": percentile(totals, 0.99), "max_ms": percentile(totals, 1.0)}


def main(argv: list[str]) -> int:
    result = asyncio.run(measure(argv[1], *(int(a) for a in argv[2:6])))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
