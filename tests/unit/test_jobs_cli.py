"""``covey jobs …`` against a SQLite database filled by a real runner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pydantic import BaseModel

import covey
from covey.cli import main
from covey.core import CoveyConfig
from covey.jobs import Retry, exponential


class Greeting(BaseModel):
    to: str


class Jobs:
    """Fills the database: three jobs that succeed, one that goes dead at once."""

    def __init__(self) -> None:
        self.ok: list[int] = []
        self.dead = 0
        self.fail: set[str] = {"bad"}
        self.started = asyncio.Event()

    def declare(self, cluster: covey.Cluster) -> None:
        @cluster.job("greet", retry=Retry(max_attempts=1))
        async def greet(job: covey.JobContext, msg: Greeting) -> str:
            if msg.to in self.fail:
                raise ValueError(f"cannot greet {msg.to}")
            return f"hello {msg.to}"

        @cluster.job("wait", retry=Retry(max_attempts=1, backoff=exponential(0.01)))
        async def wait(job: covey.JobContext, msg: Greeting) -> None:
            self.started.set()
            await asyncio.Event().wait()

        self.greet = greet
        self.wait = wait


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"COVEY_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}", "COVEY_SHARDS": "8"}


def runner_cluster(env: dict[str, str], app: Jobs) -> covey.Cluster:
    cluster = covey.Cluster(CoveyConfig.from_env(env))
    app.declare(cluster)
    return cluster


async def populate(env: dict[str, str]) -> Jobs:
    app = Jobs()
    async with runner_cluster(env, app):
        names = ("ann", "bob", "cy")
        handles = await app.greet.submit([Greeting(to=n) for n in names])
        for name, h in zip(names, handles, strict=True):
            assert await h.result(timeout=10) == f"hello {name}"
        app.ok = [h.id for h in handles]
        bad = await app.greet.submit(Greeting(to="bad"))
        with pytest.raises(covey.JobError):
            await bad.result(timeout=10)
        app.dead = bad.id
    return app


def cli(env: dict[str, str], *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, ["jobs", *args], env=env, **kwargs)


@pytest.fixture
def filled(env: dict[str, str]) -> Jobs:
    return asyncio.run(populate(env))


def test_ls_status_and_the_dead_letter(env: dict[str, str], filled: Jobs) -> None:
    result = cli(env, "ls")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "jobs (4)" in out
    for job_id in [*filled.ok, filled.dead]:
        assert str(job_id) in out
    assert out.count("succeeded") == 3 and out.count("dead") == 1
    assert "ValueError: cannot greet bad" in out

    only_dead = cli(env, "ls", "--state", "dead")
    assert only_dead.exit_code == 0 and "jobs (1)" in only_dead.stdout
    assert str(filled.dead) in only_dead.stdout
    succeeded = cli(env, "ls", "--state", "succeeded", "--limit", "2")
    assert "jobs (2)" in succeeded.stdout and "dead" not in succeeded.stdout
    assert "jobs (0)" in cli(env, "ls", "--name", "other").stdout

    status = cli(env, "status", str(filled.ok[0]))
    assert status.exit_code == 0, status.output
    assert "succeeded" in status.stdout and "'hello ann'" in status.stdout
    dead = cli(env, "status", str(filled.dead))
    assert "dead" in dead.stdout and "ValueError: cannot greet bad" in dead.stdout

    dlq = cli(env, "dlq", "ls")
    assert dlq.exit_code == 0 and "dead jobs (1)" in dlq.stdout
    assert str(filled.dead) in dlq.stdout

    refused = cli(env, "dlq", "purge", input="n\n")
    assert refused.exit_code == 1  # aborted: nothing deleted
    assert "dead jobs (1)" in cli(env, "dlq", "ls").stdout
    purged = cli(env, "dlq", "purge", "--yes")
    assert purged.exit_code == 0 and "purged 1 dead job(s)" in purged.stdout
    assert "dead jobs (0)" in cli(env, "dlq", "ls").stdout
    assert "jobs (3)" in cli(env, "ls").stdout


def test_unknown_job_exits_2(env: dict[str, str]) -> None:
    result = cli(env, "status", "123")
    assert result.exit_code == 2
    assert "error (job_not_found)" in result.stderr and "123" in result.stderr
    assert cli(env, "dlq", "retry", "123").exit_code == 2
    for huge in (str(2**63), str(10**30), "0", "-5"):  # ids no job can have
        result = cli(env, "status", "--", huge)
        assert result.exit_code == 2, result.output
        assert "error (job_not_found)" in result.stderr


def test_retrying_a_job_that_is_not_dead_exits_2(env: dict[str, str], filled: Jobs) -> None:
    result = cli(env, "dlq", "retry", str(filled.ok[0]))
    assert result.exit_code == 2
    assert "error (invalid_argument)" in result.stderr and "not dead" in result.stderr


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_cancel_and_dlq_retry_against_a_live_runner(env: dict[str, str]) -> None:
    app = Jobs()
    async with runner_cluster(env, app) as cluster:
        running = await app.wait.submit(Greeting(to="x"))
        await asyncio.wait_for(app.started.wait(), 10)
        # the CLI runs its own event loop: give it a thread while this loop serves
        result = await asyncio.to_thread(cli, env, "cancel", str(running.id))
        assert result.exit_code == 0, result.output
        assert f"job {running.id} (wait) is cancelled" in result.stdout
        assert (await running.status()).state == "cancelled"

        bad = await app.greet.submit(Greeting(to="bad"))
        with pytest.raises(covey.JobError):
            await bad.result(timeout=10)
        app.fail.clear()
        result = await asyncio.to_thread(cli, env, "dlq", "retry", str(bad.id))
        assert result.exit_code == 0, result.output
        assert f"job {bad.id} (greet) requeued" in result.stdout
        assert await cluster.jobs.result(bad.id, timeout=10) == "hello bad"


def test_ls_state_cancelled_finds_cancelled_jobs_and_status_shows_the_tenant(
    env: dict[str, str]
) -> None:
    async def fill() -> tuple[int, list[int]]:
        app = Jobs()
        async with runner_cluster(env, app):
            with covey.use_context(covey.RequestContext(tenant_id="acme")):
                later = await app.greet.submit(Greeting(to="later"), delay=3600)
            assert (await later.cancel()).state == "cancelled"
            # newer finished jobs: the cancelled one is not in the first page of them
            done = await app.greet.submit([Greeting(to=f"n{i}") for i in range(6)])
            for handle in done:
                await handle.result(timeout=10)
            return later.id, [h.id for h in done]

    cancelled, done = asyncio.run(fill())
    result = cli(env, "ls", "--state", "cancelled", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "jobs (1)" in result.stdout and str(cancelled) in result.stdout
    succeeded = cli(env, "ls", "--state", "succeeded")
    assert "jobs (6)" in succeeded.stdout and str(cancelled) not in succeeded.stdout
    assert "jobs (0)" in cli(env, "ls", "--state", "dead").stdout
    status = cli(env, "status", str(cancelled))
    assert status.exit_code == 0, status.output
    assert "cancelled" in status.stdout
    assert ["tenant", "acme"] in _rows(status.stdout)
    assert ["tenant", "-"] in _rows(cli(env, "status", str(done[0])).stdout)


def _rows(table: str) -> list[list[str]]:
    """The cells of each row of a printed table."""
    return [[cell.strip() for cell in line.strip("│┃ ").split("│")]
            for line in table.splitlines()]
