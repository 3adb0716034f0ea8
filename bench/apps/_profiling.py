"""SIGUSR1-toggled cProfile for the benchmark apps (only when ``BENCH_PROFILE_DIR`` is set):
the first signal starts profiling, the next stops it and dumps ``<prefix>-<pid>.prof``."""

from __future__ import annotations

import cProfile
import os
import signal
from pathlib import Path
from types import FrameType

PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")


class _Profiling:
    """Toggled by SIGUSR1: start, then stop and dump."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.profile: cProfile.Profile | None = None

    def toggle(self, signum: int, frame: FrameType | None) -> None:
        if self.profile is None:
            self.profile = cProfile.Profile()
            self.profile.enable()
            return
        self.profile.disable()
        self.profile.dump_stats(str(self.directory / f"{self.prefix}-{os.getpid()}.prof"))
        self.profile = None


def install_profiler(prefix: str) -> None:
    """Install the SIGUSR1 toggle if ``BENCH_PROFILE_DIR`` is set (call on the main thread,
    the one the event loop runs on)."""
    if PROFILE_DIR:
        signal.signal(signal.SIGUSR1, _Profiling(Path(PROFILE_DIR), prefix).toggle)
