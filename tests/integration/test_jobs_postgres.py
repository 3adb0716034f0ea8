"""Jobs on PostgreSQL in one process: submits inside the application's transaction,
and job ids PostgreSQL cannot hold."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import asyncpg
import pytest
from pydantic import BaseModel

import covey
from covey.core import ClusterError, CoveyConfig, JobError, Reason, StorageOptions
from covey.jobs import JobDefinition

pytestmark = pytest.mark.postgres


class Mail(BaseModel):
    to: str


@dataclass
class Runner:
    """One runner on its own schema, with a ``mail.send`` job that records its runs."""

    cluster: covey.Cluster
    send: JobDefinition[Mail]
    schema: str
    runs: list[str] = field(default_factory=list)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    # sync: pg_database runs its own event loop and must be set up outside the test's
    return pg_database


@pytest.fixture
async def runner(pg_url: str) -> AsyncIterator[Runner]:
    schema = f"jobs_{uuid.uuid4().hex[:12]}"
    cluster = covey.Cluster(CoveyConfig(database_url=pg_url, shards=8, cluster_secret="s",
                                        storage=StorageOptions(schema=schema)))
    runs: list[str] = []

    @cluster.job("mail.send")
    async def send(job: covey.JobContext, mail: Mail) -> str:
        runs.append(mail.to)
        return f"sent to {mail.to}"

    async with cluster:
        yield Runner(cluster, send, schema, runs)


async def _job_rows(url: str, schema: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(
            f"SELECT count(*) FROM {schema}.messages WHERE entity_type = 'covey.Job'"))
    finally:
        await conn.close()


async def test_a_repeated_dedupe_key_inside_a_transaction_gives_the_first_job(
    runner: Runner, pg_url: str
) -> None:
    jobs = runner.cluster.jobs
    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():
            first = await runner.send.submit(Mail(to="a@x"), dedupe_key="welcome:1",
                                             transaction=conn)
            same_tx = await runner.send.submit(Mail(to="a@x"), dedupe_key="welcome:1",
                                               transaction=conn)
        async with conn.transaction():
            later_tx = await runner.send.submit(Mail(to="a@x"), dedupe_key="welcome:1",
                                                transaction=conn)
            by_name = await jobs.submit("mail.send", {"to": "a@x"}, dedupe_key="welcome:1",
                                        transaction=conn)
            batch = await jobs.submit("mail.send", [{"to": "b@x"}, {"to": "c@x"}], transaction=conn)
    finally:
        await conn.close()
    assert not first.duplicate
    for handle in (same_tx, later_tx, by_name):
        assert handle.duplicate and handle.id == first.id
        assert (await handle.status()).id == first.id
    assert await first.result(timeout=10) == "sent to a@x"
    assert [await h.result(timeout=10) for h in batch] == ["sent to b@x", "sent to c@x"]
    assert not any(h.duplicate for h in batch)
    assert await _job_rows(pg_url, runner.schema) == 3
    assert sorted(runner.runs) == ["a@x", "b@x", "c@x"]


async def test_job_ids_outside_int64_are_not_found_and_storage_refuses_them(
    runner: Runner,
) -> None:
    jobs = runner.cluster.jobs
    for bad in (2**63, 2**64 + 1, 0, -1):
        for ask in (partial(jobs.status, bad), partial(jobs.result, bad, timeout=1),
                    partial(jobs.cancel, bad, timeout=1)):
            with pytest.raises(JobError) as info:
                await ask()
            assert info.value.reason is Reason.JOB_NOT_FOUND and not info.value.retryable
    messages = runner.cluster.storage.messages
    for ids in ([2**63], [0], [1, -(2**63) - 1], ["1"]):
        for method in (messages.inspect, messages.mark_started, messages.delete):
            with pytest.raises(ClusterError) as refused:
                await method(ids)  # type: ignore[arg-type]
            assert refused.value.reason is Reason.INVALID_ARGUMENT
            assert refused.value.details["field"] == "request_id"
    handle = await runner.send.submit(Mail(to="still@x"))
    assert await handle.result(timeout=10) == "sent to still@x"


async def test_a_bad_delay_inside_a_transaction_is_refused_and_nothing_is_stored(
    runner: Runner, pg_url: str
) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():
            with pytest.raises(ClusterError) as info:
                await runner.send.submit(Mail(to="x"), delay=float("nan"), transaction=conn)
            assert info.value.reason is Reason.INVALID_ARGUMENT
            assert info.value.details["field"] == "delay"
    finally:
        await conn.close()
    assert await _job_rows(pg_url, runner.schema) == 0
