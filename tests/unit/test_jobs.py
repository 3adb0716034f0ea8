"""Jobs on the in-memory TestCluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import covey
from covey.core import ClusterError, JobError, Reason, SerializationError
from covey.jobs import JobDefinition, Retry, exponential
from covey.testing import TestCluster


class Email(BaseModel):
    to: str


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class App:
    """Declares the test jobs on every member and records what ran."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.started: list[str] = []
        self.gate = asyncio.Event()
        self.fail_times: dict[str, int] = {}
        self.cleaned: list[int] = []
        self.defs: dict[str, JobDefinition[Any]] = {}

    def configure(self, cluster: covey.Cluster) -> None:
        fast = Retry(max_attempts=3, backoff=exponential(0.01, 0.05), jitter=False,
                     give_up_on=(PermissionError,))

        @cluster.job("email.send", retry=fast)
        async def send(job: covey.JobContext, msg: Email) -> str:
            self.started.append(msg.to)
            left = self.fail_times.get(msg.to, 0)
            if left:
                self.fail_times[msg.to] = left - 1
                raise ConnectionError(f"smtp down for {msg.to}")
            if msg.to == "forbidden":
                raise PermissionError("never")
            self.sent.append((msg.to, job.attempt))
            return f"sent to {msg.to}"

        @cluster.job("serial", concurrency=1)
        async def serial(job: covey.JobContext, msg: Email) -> None:
            self.started.append(msg.to)
            await self.gate.wait()

        @cluster.job("slow", timeout=0.05, retry=Retry(max_attempts=2, backoff=exponential(0.01)))
        async def slow(job: covey.JobContext, msg: Email) -> None:
            await asyncio.sleep(1)

        @cluster.job("cancellable")
        async def cancellable(job: covey.JobContext, msg: Email) -> None:
            self.started.append(msg.to)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cleaned.append(job.job_id)
                raise

        self.defs.setdefault("send", send)  # the client member's definitions submit
        self.defs.setdefault("serial", serial)
        self.defs.setdefault("slow", slow)
        self.defs.setdefault("cancellable", cancellable)
        self.clusters = [*getattr(self, "clusters", []), cluster]


def client_defs(app: App, tc: TestCluster) -> dict[str, JobDefinition[Any]]:
    """Definitions bound to the client member (the last cluster configured)."""
    member = tc.client_member
    return {k: JobDefinition(d.spec, lambda: member.jobs) for k, d in app.defs.items()}


async def test_submit_runs_once_and_returns_the_result() -> None:
    app = App()
    async with TestCluster(runners=3, configure=app.configure) as tc:
        jobs = client_defs(app, tc)
        handle = await jobs["send"].submit(Email(to="a@x"))
        assert await handle.result(timeout=5) == "sent to a@x"
        status = await handle.status()
        assert status.state == "succeeded" and status.attempts == 1
        assert status.result == "sent to a@x" and status.finished_at is not None
        handles = await jobs["send"].submit([Email(to=f"b{i}@x") for i in range(20)])
        assert len({h.id for h in handles}) == 20
        results = await asyncio.gather(*(h.result(timeout=5) for h in handles))
        assert results == [f"sent to b{i}@x" for i in range(20)]
        assert sorted(t for t, _ in app.sent) == sorted(["a@x"] + [f"b{i}@x" for i in range(20)])


async def test_retries_with_backoff_then_dead_letter_then_retry_from_it() -> None:
    app = App()
    app.fail_times = {"flaky@x": 2, "down@x": 10}
    async with TestCluster(runners=2, configure=app.configure) as tc:
        jobs = client_defs(app, tc)
        flaky = await jobs["send"].submit(Email(to="flaky@x"))
        assert await flaky.result(timeout=5) == "sent to flaky@x"
        assert ("flaky@x", 3) in app.sent  # third attempt succeeded
        down = await jobs["send"].submit(Email(to="down@x"))
        with pytest.raises(JobError) as info:
            await down.result(timeout=5)
        assert info.value.reason is Reason.JOB_DEAD
        status = await down.status()
        assert status.state == "dead" and status.attempts == 3
        assert "smtp down" in str(status.last_error)
        dead = await tc.client_member.jobs.dead_letters()
        assert [s.id for s in dead] == [down.id]
        app.fail_times["down@x"] = 0
        again = await tc.client_member.jobs.retry_dead(down.id)
        assert await again.result(timeout=5) == "sent to down@x"
        assert (await again.status()).attempts == 1  # attempts were reset
        assert await tc.client_member.jobs.dead_letters() == []


async def test_give_up_on_goes_straight_to_the_dead_letter() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        handle = await client_defs(app, tc)["send"].submit(Email(to="forbidden"))
        with pytest.raises(JobError):
            await handle.result(timeout=5)
        status = await handle.status()
        assert status.state == "dead" and status.attempts == 1
        assert await tc.client_member.jobs.purge_dead() == 1
        with pytest.raises(JobError) as info:
            await handle.status()
        assert info.value.reason is Reason.JOB_NOT_FOUND


async def test_timeout_counts_as_a_failed_attempt() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        handle = await client_defs(app, tc)["slow"].submit(Email(to="t"))
        with pytest.raises(JobError):
            await handle.result(timeout=5)
        status = await handle.status()
        assert status.state == "dead" and status.attempts == 2
        assert "timed out" in str(status.last_error)


async def test_dedupe_under_fifty_concurrent_submits() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        send = client_defs(app, tc)["send"]
        handles = await asyncio.gather(
            *(send.submit(Email(to="once@x"), dedupe_key="welcome:42") for _ in range(50)))
        assert len({h.id for h in handles}) == 1
        assert sum(1 for h in handles if not h.duplicate) == 1
        await handles[0].result(timeout=5)
        assert [t for t, _ in app.sent] == ["once@x"]


async def test_priority_orders_a_backlog() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        serial = client_defs(app, tc)["serial"]
        first = await serial.submit(Email(to="first"))
        await until(lambda: app.started == ["first"])
        low = await serial.submit([Email(to=f"low{i}") for i in range(3)], priority="low")
        high = await serial.submit([Email(to=f"high{i}") for i in range(3)], priority="high")
        mid = await serial.submit(Email(to="normal"))
        await until(lambda: len(tc.runners[0].job_runner._slots["serial"]._waiters) == 7)  # type: ignore[union-attr]
        app.gate.set()
        for h in [first, *low, *high, mid]:
            await h.result(timeout=5)
        assert app.started == ["first", "high0", "high1", "high2", "normal",
                               "low0", "low1", "low2"]


async def test_cancel_queued_and_running() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        jobs = client_defs(app, tc)
        later = await jobs["send"].submit(Email(to="later@x"), delay=30)
        assert (await later.status()).state == "scheduled"
        final = await later.cancel()
        assert final.state == "cancelled" and final.attempts == 0
        running = await jobs["cancellable"].submit(Email(to="busy"))
        await until(lambda: app.started == ["busy"])
        assert (await running.status()).state == "running"
        final = await running.cancel()
        assert final.state == "cancelled"
        assert app.cleaned == [running.id]  # the handler saw CancelledError
        with pytest.raises(JobError) as info:
            await running.result(timeout=1)
        assert info.value.reason is Reason.JOB_CANCELLED
        assert "later@x" not in [t for t, _ in app.sent]


async def test_bad_payloads() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        send = client_defs(app, tc)["send"]
        with pytest.raises(SerializationError) as info:
            await send.submit({"to": 42, "extra": 1})
        assert info.value.details["fields"] == ["to"]
        # a stored job whose payload no longer validates (a changed model) is dead, once
        with pytest.raises(covey.EntityError):  # the stored job's reply: dead
            await tc.client_member.send_raw("covey.Job", "raw-1", "email.send",
                                            b"\x81\xa2no\x01", persisted=True)
        dead = await tc.client_member.jobs.dead_letters()
        assert len(dead) == 1 and "SerializationError" in str(dead[0].last_error)
        assert app.started == []


async def test_jobs_survive_a_killed_runner() -> None:
    app = App()
    async with TestCluster(runners=3, configure=app.configure) as tc:
        handles = await client_defs(app, tc)["send"].submit(
            [Email(to=f"k{i}") for i in range(200)])
        await tc.kill(0)
        await asyncio.gather(*(h.result(timeout=10) for h in handles))
        assert {t for t, _ in app.sent} == {f"k{i}" for i in range(200)}


async def test_dead_job_keeps_its_error_history() -> None:
    app = App()
    app.fail_times = {"hist@x": 10}
    async with TestCluster(runners=1, configure=app.configure) as tc:
        handle = await client_defs(app, tc)["send"].submit(Email(to="hist@x"))
        with pytest.raises(JobError):
            await handle.result(timeout=5)
        status = await handle.status()
        assert status.errors == ("ConnectionError: smtp down for hist@x",) * 3
        assert status.attempts == 3


async def test_progress_and_keep_alive_show_in_the_status() -> None:
    step = asyncio.Event()

    def configure(cluster: covey.Cluster) -> None:
        @cluster.job("long")
        async def long(job: covey.JobContext, msg: Email) -> None:
            await job.progress(0.5, "half way")
            await job.keep_alive()
            await step.wait()

    async with TestCluster(runners=1, configure=configure) as tc:
        long_def = JobDefinition(tc.client_member._job_specs[0] if tc.client_member._job_specs
                                 else tc.runners[0]._job_specs[0], lambda: tc.client_member.jobs)
        handle = await long_def.submit(Email(to="x"))
        status = await handle.status()
        deadline = asyncio.get_running_loop().time() + 5
        while status.progress is None:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
            status = await handle.status()
        assert status.state == "running" and status.progress == 0.5
        assert status.progress_note == "half way" and status.heartbeat_at is not None
        step.set()
        await handle.result(timeout=5)
        with pytest.raises(covey.ClusterError):
            await covey.jobs.JobContext(1, "n", 1, 1, covey.RequestContext()).progress(2.0)


async def test_backlog_and_dead_letter_gauges() -> None:
    from prometheus_client import REGISTRY

    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        jobs = client_defs(app, tc)
        await jobs["send"].submit(Email(to="later@x"), delay=60, priority="low")
        dead = await jobs["send"].submit(Email(to="forbidden"))
        with pytest.raises(JobError):
            await dead.result(timeout=5)
        host = next(r for r in tc.runners if "covey.jobs-metrics" in r.singletons.running())
        await host.singletons.stop()  # restart it so it samples now
        await host.singletons.shards_acquired({host.singletons.shard_of(
            host.singletons.specs["covey.jobs-metrics"]): host.sharding.owned[
                host.singletons.shard_of(host.singletons.specs["covey.jobs-metrics"])]})
        await until(lambda: REGISTRY.get_sample_value(
            "covey_jobs_dead_letter", {"name": "email.send"}) == 1.0)
        assert REGISTRY.get_sample_value(
            "covey_jobs_backlog", {"name": "email.send", "priority": "-10"}) == 1.0


async def test_a_delayed_job_runs_on_time_after_its_runner_died() -> None:
    from covey.core import ShardingOptions

    app = App()
    # a 30 s safety poll: only the new owner's due-time lookup can start it on time
    options = ShardingOptions(heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
                              lock_refresh_interval=0.5, poll_interval=30.0,
                              shutdown_grace=2.0, call_timeout=10.0)
    async with TestCluster(runners=2, configure=app.configure, sharding=options) as tc:
        # taken before the submit: its due time is counted from inside the call
        submitted = asyncio.get_running_loop().time()
        handle = await client_defs(app, tc)["send"].submit(Email(to="delayed@x"), delay=1.0)
        shard = (await tc.storage.messages.inspect([handle.id]))[handle.id].message.address.shard
        owner = next(i for i, r in enumerate(tc.runners) if shard in r.sharding.owned)
        await tc.kill(owner)
        # nobody waits on the job (a waiter's push would also set the new owner's timer)
        await until(lambda: ("delayed@x", 1) in app.sent, timeout=3.0)
        assert asyncio.get_running_loop().time() - submitted >= 1.0  # not early either


async def _stored_jobs(tc: TestCluster) -> int:
    return len(await tc.storage.messages.list_messages("covey.Job", limit=1000))


def _refused(info: pytest.ExceptionInfo[ClusterError], field: str) -> None:
    """A caller mistake: typed, non-retryable, naming the argument."""
    assert info.value.reason is Reason.INVALID_ARGUMENT, info.value
    assert not info.value.retryable
    assert info.value.details.get("field") == field, info.value.details


BAD_DELAYS: tuple[Any, ...] = ("soon", -1, -0.5, float("nan"), float("inf"), float("-inf"),
                               True, [1.0])
BAD_PRIORITIES: tuple[Any, ...] = ("urgent", 32768, -32769, 10**20, True, 1.5, float("nan"))


async def test_submit_refuses_bad_delays_and_priorities_before_storing() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        send = client_defs(app, tc)["send"]
        for delay in BAD_DELAYS:
            with pytest.raises(ClusterError) as info:
                await send.submit(Email(to="x"), delay=delay)
            _refused(info, "delay")
        for priority in BAD_PRIORITIES:
            with pytest.raises(ClusterError) as info:
                await send.submit([Email(to="x")], priority=priority)
            _refused(info, "priority")
        for key in (42, b"k", "", "a\x00b", "\ud800", "k" * 2000):
            with pytest.raises(ClusterError) as info:
                await send.submit(Email(to="x"), dedupe_key=key)  # type: ignore[arg-type]
            _refused(info, "dedupe_key")
        assert await _stored_jobs(tc) == 0 and app.started == []
        # the member keeps serving: the same submit with good values runs
        handle = await send.submit(Email(to="ok"), delay=0.01, priority=-5, dedupe_key="ok")
        assert await handle.result(timeout=5) == "sent to ok"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_job_ids_outside_int64_are_not_found_and_storage_refuses_them(
    backend: str, tmp_path: Path
) -> None:
    app = App()
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path / 'ids.db'}"
    async with TestCluster(runners=1, configure=app.configure, database_url=url) as tc:
        jobs = tc.client_member.jobs
        for bad in (2**63, 2**64 + 1, 0, -1, -(2**63) - 1):
            for ask in (partial(jobs.status, bad), partial(jobs.result, bad, timeout=1),
                        partial(jobs.cancel, bad, timeout=1)):
                with pytest.raises(JobError) as not_found:
                    await ask()
                assert not_found.value.reason is Reason.JOB_NOT_FOUND
                assert not not_found.value.retryable
        for wrong in ("12", 1.0, None, True):
            with pytest.raises(ClusterError) as info:
                await jobs.status(wrong)  # type: ignore[arg-type]
            _refused(info, "job_id")
        messages = tc.storage.messages
        for ids in ([2**63], [0], [-7], [1, 2**64], ["1"], [1.0], [True]):
            for method in (messages.inspect, messages.mark_started, messages.delete):
                with pytest.raises(ClusterError) as info:
                    await method(ids)  # type: ignore[arg-type]
                _refused(info, "request_id")
        handle = await client_defs(app, tc)["send"].submit(Email(to="still@x"))
        assert await handle.result(timeout=5) == "sent to still@x"
        assert (await messages.inspect([2**63 - 1])) == {}  # the largest id is a valid one


async def test_submit_by_name_from_a_member_that_does_not_declare_the_job() -> None:
    app = App()

    def runners_only(cluster: covey.Cluster) -> None:
        if not cluster.client_only:  # the client member declares nothing
            app.configure(cluster)

    async with TestCluster(runners=2, configure=runners_only) as tc:
        jobs = tc.client_member.jobs
        handle = await jobs.submit("email.send", Email(to="model@x"))  # a model: plain data
        assert handle.name == "email.send" and not handle.duplicate
        assert await handle.result(timeout=5) == "sent to model@x"
        plain = await jobs.submit("email.send", {"to": "plain@x"}, priority="high")
        assert await plain.result(timeout=5) == "sent to plain@x"
        batch = await jobs.submit("email.send", [Email(to=f"b{i}@x") for i in range(3)],
                                  priority=5)
        assert [await h.result(timeout=5) for h in batch] == [f"sent to b{i}@x" for i in range(3)]
        first = await jobs.submit("email.send", {"to": "once@x"}, dedupe_key="welcome:7")
        again = await jobs.submit("email.send", {"to": "once@x"}, dedupe_key="welcome:7")
        assert again.duplicate and again.id == first.id
        later = await jobs.submit("email.send", {"to": "later@x"}, delay=30)
        assert (await later.status()).state == "scheduled"
        await later.cancel()
        # not declared here, so a payload that does not fit is found by the runner: dead
        wrong = await jobs.submit("email.send", {"to": 42})
        with pytest.raises(JobError) as dead:
            await wrong.result(timeout=5)
        assert dead.value.reason is Reason.JOB_DEAD
        stored = await _stored_jobs(tc)
        for call, field in (
            (lambda: jobs.submit("email.send", {"to": "x"}, priority="urgent"), "priority"),
            (lambda: jobs.submit("email.send", {"to": "x"}, delay="soon"), "delay"),
            (lambda: jobs.submit("email.send", {"to": "x"}, delay=float("nan")), "delay"),
            (lambda: jobs.submit("", {"to": "x"}), "name"),
            (lambda: jobs.submit(42, {"to": "x"}), "name"),
            (lambda: jobs.submit("email.send", [{"to": "x"}], dedupe_key="k"), "dedupe_key"),
        ):
            with pytest.raises(ClusterError) as info:
                await call()  # type: ignore[no-untyped-call]
            _refused(info, field)
        with pytest.raises(SerializationError) as unplain:
            await jobs.submit("email.send", object())
        assert unplain.value.reason is Reason.PAYLOAD_UNKNOWN_TYPE
        assert await _stored_jobs(tc) == stored  # nothing refused was stored
        assert sorted(t for t, _ in app.sent) == sorted(
            ["model@x", "plain@x", "b0@x", "b1@x", "b2@x", "once@x"])


async def test_submit_by_name_validates_against_a_local_declaration() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        jobs = tc.client_member.jobs
        with pytest.raises(SerializationError) as info:
            await jobs.submit("email.send", {"to": 42})
        assert info.value.details["fields"] == ["to"]
        assert await _stored_jobs(tc) == 0
        handle = await jobs.submit("email.send", {"to": "typed@x"}, priority="low")
        assert await handle.result(timeout=5) == "sent to typed@x"
        assert (await tc.storage.messages.inspect([handle.id]))[handle.id].message.priority == -10


async def test_a_cluster_that_is_not_started_says_which_and_what_to_do() -> None:
    from covey.core import CoveyConfig

    config = CoveyConfig(database_url="postgresql://app:s3cret@db.example:5432/shop")
    cluster = covey.Cluster(config, client_only=True)

    @cluster.job("noop")
    async def noop(job: covey.JobContext, msg: Email) -> None:
        return None

    for attempt in (lambda: cluster.jobs.status(1), lambda: noop.submit(Email(to="x")),
                    lambda: cluster.jobs.submit("noop", {"to": "x"})):
        with pytest.raises(ClusterError) as info:
            await attempt()  # type: ignore[no-untyped-call]
        text = str(info.value)
        assert info.value.reason is Reason.INVALID_ARGUMENT
        assert "db.example:5432/shop" in text and "s3cret" not in text
        assert "client-only" in text
        assert "async with cluster:" in text and "await cluster.start()" in text


async def test_jobs_carry_the_submitters_tenant_and_other_tenants_cannot_see_them() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        send = client_defs(app, tc)["send"]
        jobs = tc.client_member.jobs
        with covey.use_context(covey.RequestContext(tenant_id="acme")):
            done = await send.submit(Email(to="acme@x"))
            later = await jobs.submit("email.send", {"to": "later@x"}, delay=30)
        untenanted = await send.submit(Email(to="nobody@x"))
        assert await jobs.result(done.id, tenant="acme", timeout=5) == "sent to acme@x"
        status = await jobs.status(done.id, tenant="acme")
        assert status.tenant == "acme" and status.state == "succeeded"
        assert (await done.status()).tenant == "acme"  # no tenant given: no check
        assert (await jobs.status(untenanted.id)).tenant is None
        for job_id, tenant in ((done.id, "globex"), (later.id, "globex"), (done.id, ""),
                               (untenanted.id, "acme")):
            for ask in (partial(jobs.status, job_id, tenant=tenant),
                        partial(jobs.result, job_id, tenant=tenant, timeout=1),
                        partial(jobs.cancel, job_id, tenant=tenant, timeout=1)):
                with pytest.raises(JobError) as info:
                    await ask()
                assert info.value.reason is Reason.JOB_NOT_FOUND
                assert tenant not in str(info.value) or not tenant  # reveals nothing
        assert (await jobs.status(later.id)).state == "scheduled"  # another tenant's cancel
        assert (await jobs.cancel(later.id, tenant="acme")).state == "cancelled"
        with pytest.raises(ClusterError) as bad:
            await jobs.status(done.id, tenant=42)  # type: ignore[arg-type]
        _refused(bad, "tenant")
        assert "later@x" not in [t for t, _ in app.sent]


def test_job_declarations_refuse_bad_options() -> None:
    from covey.core import CoveyConfig

    cluster = covey.Cluster(CoveyConfig(database_url="memory://"), client_only=True)

    async def handler(job: covey.JobContext, msg: Email) -> None:
        return None

    for options, field in (
        ({"timeout": float("nan")}, "timeout"), ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"), ({"timeout": "1"}, "timeout"),
        ({"concurrency": 0}, "concurrency"), ({"concurrency": 1.5}, "concurrency"),
        ({"priority": "urgent"}, "priority"), ({"retry": 3}, "retry"),
    ):
        with pytest.raises(ClusterError) as info:
            cluster.job("x", **options)(handler)
        _refused(info, field)
    for name in ("", "a\x00b", "n" * 256, 42):
        with pytest.raises(ClusterError) as info:
            cluster.job(name)(handler)  # type: ignore[arg-type]
        _refused(info, "name")
    cluster.job("x", timeout=2.5)(handler)
    with pytest.raises(ClusterError) as info:
        cluster.job("x")(handler)
    _refused(info, "name")


async def test_a_job_without_a_payload_annotation_takes_plain_data() -> None:
    def configure(cluster: covey.Cluster) -> None:
        @cluster.job("plain")
        async def plain(job, payload):  # type: ignore[no-untyped-def]
            return payload

    async with TestCluster(runners=1, configure=configure) as tc:
        handle = await tc.client_member.jobs.submit("plain", Email(to="p@x"))
        assert await handle.result(timeout=5) == {"to": "p@x"}


async def test_a_payload_nested_too_deep_is_a_typed_error() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        deep: Any = "leaf"
        for _ in range(10_000):
            deep = [deep]
        for submit in (lambda: tc.client_member.jobs.submit("email.send", {"to": deep}),
                       lambda: tc.client_member.jobs.submit("undeclared", {"to": deep})):
            with pytest.raises(SerializationError) as info:
                await submit()
            assert not info.value.retryable
        assert await _stored_jobs(tc) == 0
