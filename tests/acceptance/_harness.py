"""Start, kill and stop real runner processes for the acceptance tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunnerProcess:
    """One ``covey run`` process."""

    process: subprocess.Popen[str]
    address: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def runner_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "COVEY_DATABASE_URL": database_url,
        "COVEY_SHARDS": "30",
        "COVEY_CLUSTER_SECRET": "acceptance-secret",
        "COVEY_RUNNER_PORT": "0",
        "COVEY_SHARDING_SHUTDOWN_GRACE": "10",
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    env.update(extra)
    return env


def start_runner(database_url: str, app: str = "tests.acceptance.app:cluster",
                 timeout: float = 30, **extra: str) -> RunnerProcess:
    """Start a runner and wait until it announces itself."""
    process = subprocess.Popen(
        [sys.executable, "-m", "covey", "run", app, "--log-level", "WARNING"],
        cwd=ROOT, env=runner_env(database_url, **extra),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    runner = RunnerProcess(process)
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        runner.lines.append(line)
        if " ready" in line and line.startswith("covey runner "):
            runner.address = line.split()[2]
            _drain(runner)
            return runner
    process.kill()
    raise RuntimeError("runner did not start:\n" + "".join(runner.lines))


def _drain(runner: RunnerProcess) -> None:
    import threading

    def pump() -> None:
        assert runner.process.stdout is not None
        for line in runner.process.stdout:
            runner.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()


def stop_all(runners: Iterator[RunnerProcess] | list[RunnerProcess]) -> None:
    for runner in runners:
        if runner.process.poll() is None:
            runner.process.kill()
        runner.process.wait(timeout=10)
        if runner.process.stdout is not None:
            runner.process.stdout.close()


async def wait_until(predicate, timeout: float = 30, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def start_live(start, caller, count: int, **runner: str) -> list[RunnerProcess]:  # type: ignore[no-untyped-def]
    """Start ``count`` runners with ``start(**runner)`` and wait until ``caller`` (a
    started cluster member) sees exactly them live."""
    procs = [start(**runner) for _ in range(count)]
    wanted = {p.address for p in procs}

    async def all_live() -> bool:
        await caller.sharding.refresh_membership()
        return {str(r.address) for r in caller.sharding.live} == wanted

    await wait_until(all_live, timeout=30)
    return procs
