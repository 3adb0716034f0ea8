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

import cProfile
import os
import signal
from pathlib import Path
from types import FrameType

import covey

PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")


class _Profiling:
    """Toggled by SIGUSR1: start, then stop and dump."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.profile: cProfile.Profile | None = None

    def toggle(self, signum: int, frame: FrameType | None) -> None:
        if self.profile is None:
            self.profile = cProfile.Profile()
            self.profile.enable()
            return
        self.profile.disable()
        self.profile.dump_stats(str(self.directory / f"runner-{os.getpid()}.prof"))
        self.profile = None


def make_cluster() -> covey.Cluster:
    if PROFILE_DIR:
        # the handler runs on the main thread, the one asyncio.run() drives
        signal.signal(signal.SIGUSR1, _Profiling(Path(PROFILE_DIR)).toggle)
    return covey.Cluster.from_env()


cluster = make_cluster
