"""The runner application of the ``webhooks`` benchmark.

``python -m covey run bench.apps.webhooks_bench_app:cluster`` (cwd = repo root,
the repo root on ``PYTHONPATH``), configured by ``COVEY_*`` variables. It
declares nothing: every runner makes the attempts of the ``covey.webhook``
deliveries its shards own; the bench process (client-only) adds the endpoint
and sends.

Profiling (only when ``BENCH_PROFILE_DIR`` is set): the first ``SIGUSR1``
starts cProfile on the event loop's thread, the next one stops it and writes
``runner-<pid>.prof`` there (``python -m pstats`` reads it). The bench sends the
two signals around its throughput phase.
"""

from __future__ import annotations

from bench.apps._profiling import install_profiler

import covey


def make_cluster() -> covey.Cluster:
    install_profiler("runner")  # only with BENCH_PROFILE_DIR set
    return covey.Cluster.from_env()


cluster = make_cluster
