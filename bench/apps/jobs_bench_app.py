"""The jobs application of the ``jobs-throughput`` and ``jobs-latency`` benchmarks.

``python -m covey run bench.apps.jobs_bench_app:cluster`` (cwd = repo root, the
repo root on ``PYTHONPATH``), configured by ``COVEY_*`` variables. The bench
process (client-only) calls :func:`declare` on its own cluster to submit.

* ``noop``: does nothing (throughput).
* ``stamp``: returns ``time.time()`` taken first thing in the handler (latency:
  the submitter compares it with its own ``time.time()`` before ``submit``; same
  machine, same clock).

Both use the library defaults (retry, priority, concurrency).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

import covey
from covey.jobs import JobDefinition


class Task(BaseModel):
    n: int


def declare(cluster: covey.Cluster) -> dict[str, JobDefinition[Any]]:
    @cluster.job("noop")
    async def noop(job: covey.JobContext, task: Task) -> None:
        return None

    @cluster.job("stamp")
    async def stamp(job: covey.JobContext, task: Task) -> float:
        return time.time()

    return {"noop": noop, "stamp": stamp}


def make_cluster() -> covey.Cluster:
    cluster = covey.Cluster.from_env()
    declare(cluster)
    return cluster


cluster = make_cluster
