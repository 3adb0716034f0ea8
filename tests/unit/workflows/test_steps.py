"""Workflow steps: journaled once, re-run after a crash, retried, timed out, gathered;
journaled values (now, uuid, random) and durable sleep."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable

import pytest
from pydantic import BaseModel

import covey
from covey.core import Reason, TestClock, WorkflowError
from covey.testing import TestCluster
from tests.unit._waiting import until

from . import owner_index

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0


class Order(BaseModel):
    id: str
    sku: str
    amount: int


class Receipt(BaseModel):
    order_id: str
    reservation: str
    charge: str


class App:
    """Declares the test workflows on every member and records each effect."""

    def __init__(self) -> None:
        self.effects: list[str] = []
        self.gate = asyncio.Event()
        self.failures_left = 0
        self.seen_values: list[tuple[float, str, float]] = []

    def count(self, effect: str) -> int:
        return self.effects.count(effect)

    def configure(self, cluster: covey.Cluster) -> None:
        async def reserve(sku: str) -> str:
            self.effects.append("reserve")
            return f"res-{sku}"

        async def charge(amount: int) -> str:
            self.effects.append("charge")
            await self.gate.wait()
            return f"ch-{amount}"

        def ship(order_id: str) -> None:  # a plain (sync) function is a step too
            self.effects.append("ship")

        @cluster.workflow("order", version=1)
        async def order(ctx: covey.WorkflowContext, o: Order) -> Receipt:
            reservation = await ctx.step(reserve, o.sku)
            charged = await ctx.step(charge, o.amount)
            await ctx.step(ship, o.id)
            return Receipt(order_id=o.id, reservation=reservation, charge=charged)

        async def flaky() -> str:
            self.effects.append("flaky")
            if self.failures_left > 0:
                self.failures_left -= 1
                raise ConnectionError("gateway down")
            return "ok"

        @cluster.workflow("flaky")
        async def flaky_wf(ctx: covey.WorkflowContext, attempts: int) -> str:
            return str(await ctx.step(flaky, retry=covey.Retry(
                max_attempts=attempts, backoff=covey.exponential(0.01, 0.01), jitter=False)))

        async def hang() -> None:
            self.effects.append("hang")
            await asyncio.Event().wait()

        @cluster.workflow("slow")
        async def slow(ctx: covey.WorkflowContext, attempts: int) -> None:
            await ctx.step(hang, timeout=dt.timedelta(milliseconds=50), retry=covey.Retry(
                max_attempts=attempts, backoff=covey.exponential(0.01, 0.01), jitter=False))

        async def first(x: int) -> int:
            self.effects.append("first-started")
            await self.gate.wait()  # released by the last step: it finishes last
            self.effects.append("first-done")
            return x * 10

        async def second(x: int) -> int:
            self.effects.append("second")
            return x * 10

        async def third(x: int) -> int:
            self.effects.append("third")
            self.gate.set()
            return x * 10

        @cluster.workflow("fan-out")
        async def fan_out(ctx: covey.WorkflowContext, n: int) -> list[int]:
            return await ctx.gather(ctx.step(first, n), ctx.step(second, n + 1),
                                    ctx.step(third, n + 2))

        @cluster.workflow("plain-gather")
        async def plain_gather(ctx: covey.WorkflowContext, n: int) -> list[int]:
            return list(await asyncio.gather(ctx.step(second, n), ctx.step(third, n)))

        async def wait_gate() -> None:
            self.effects.append("wait")
            await self.gate.wait()

        @cluster.workflow("values")
        async def values(ctx: covey.WorkflowContext, _: None) -> list[str]:
            now, uid, rnd = await ctx.now(), await ctx.uuid(), await ctx.random()
            self.seen_values.append((now.timestamp(), str(uid), rnd))
            await ctx.step(wait_gate)
            return [now.isoformat(), str(uid), repr(rnd)]

        async def after_sleep() -> None:
            self.effects.append("after-sleep")

        @cluster.workflow("sleeper")
        async def sleeper(ctx: covey.WorkflowContext, seconds: float) -> float:
            before = await ctx.now()
            await ctx.sleep(dt.timedelta(seconds=seconds))
            await ctx.step(after_sleep)
            return (await ctx.now() - before).total_seconds()


async def test_a_completed_step_is_not_run_again_when_the_owner_dies() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("order", Order(id="o-1", sku="ABC", amount=7),
                                    workflow_id="order-1")
        await until(lambda: app.effects == ["reserve", "charge"])  # charge blocks
        await tc.kill(owner_index(tc, "order-1"))
        # the survivor owns it now and runs it from its journal: reserve is not run
        # again, charge (which never finished) is: at least once
        await until(lambda: app.count("charge") == 2)
        app.gate.set()
        receipt = await handle.result(timeout=10)
        assert receipt == Receipt(order_id="o-1", reservation="res-ABC", charge="ch-7")
        assert app.effects == ["reserve", "charge", "charge", "ship"]
        journal = await client.workflows.journal("order-1")
        assert [(e.seq, e.key.rsplit(".", 1)[-1], e.kind, e.status) for e in journal] == [
            (1, "reserve#1", "step", "done"), (2, "charge#1", "step", "done"),
            (3, "ship#1", "step", "done")]
        assert [e.result for e in journal] == ["res-ABC", "ch-7", None]
        status = await handle.status()
        assert (status.state, status.steps, status.error) == ("completed", 3, None)


async def test_a_second_start_with_the_same_id_is_the_same_execution() -> None:
    app = App()
    app.gate.set()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        first = await client.start("order", Order(id="o-2", sku="X", amount=1),
                                   workflow_id="order-2")
        assert first.id == "order-2" and not first.duplicate
        await first.result(timeout=5)
        again = await client.start("order", Order(id="o-2", sku="X", amount=1),
                                   workflow_id="order-2")
        assert again.id == "order-2" and again.duplicate
        assert (await again.result(timeout=5)).charge == "ch-1"  # typed: a Receipt
        assert app.effects == ["reserve", "charge", "ship"]  # one run
        listed = await client.workflows.list(name="order")
        assert [s.workflow_id for s in listed] == ["order-2"]


async def test_a_start_without_an_id_gets_a_fresh_one_each_time() -> None:
    app = App()
    app.gate.set()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handles = [await tc.client_member.start("order", Order(id="o", sku="Y", amount=2))
                   for _ in range(2)]
        assert handles[0].id != handles[1].id
        assert not any(h.duplicate for h in handles)
        for h in handles:
            await h.result(timeout=5)
        assert app.count("ship") == 2


async def test_a_step_is_retried_with_backoff_until_it_succeeds() -> None:
    app = App()
    app.failures_left = 2
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("flaky", 3, workflow_id="flaky-1")
        assert await handle.result(timeout=5) == "ok"
        assert app.effects == ["flaky"] * 3
        [entry] = await tc.client_member.workflows.journal("flaky-1")
        assert (entry.status, entry.result, entry.error) == ("done", "ok", None)


async def test_a_step_that_keeps_failing_fails_the_workflow_with_its_error() -> None:
    app = App()
    app.failures_left = 10
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("flaky", 3, workflow_id="flaky-2")
        with pytest.raises(WorkflowError) as info:
            await handle.result(timeout=5)
        assert app.effects == ["flaky"] * 3  # max_attempts, no more
        error = info.value
        assert error.reason is Reason.WORKFLOW_FAILED
        assert error.details["error_type"] == "ConnectionError"
        assert error.details["message"] == "gateway down"
        assert error.details["state"] == "failed"
        status = await handle.status()
        assert status.state == "failed"
        assert status.error == "ConnectionError: gateway down"
        [entry] = await tc.client_member.workflows.journal("flaky-2")
        assert (entry.status, entry.error) == ("failed", "ConnectionError: gateway down")
        # an ended execution is not run again by a second start
        again = await tc.client_member.start("flaky", 3, workflow_id="flaky-2")
        assert again.duplicate
        with pytest.raises(WorkflowError):
            await again.result(timeout=5)
        assert app.count("flaky") == 3


async def test_a_step_timeout_ends_each_attempt() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("slow", 2, workflow_id="slow-1")
        with pytest.raises(WorkflowError) as info:
            await handle.result(timeout=5)
        assert info.value.reason is Reason.WORKFLOW_FAILED
        assert info.value.details["error_type"] == "TimeoutError"
        assert "0.05" in str(info.value.details["message"])
        assert app.effects == ["hang", "hang"]


async def test_gather_returns_results_and_journals_in_argument_order() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("fan-out", 1, workflow_id="fan-1")
        assert await handle.result(timeout=5) == [10, 20, 30]
        # the steps ran concurrently: the first finished last
        assert app.effects.index("first-started") < app.effects.index("third")
        assert app.effects[-1] == "first-done"
        journal = await tc.client_member.workflows.journal("fan-1")
        assert [(e.seq, e.key.rsplit(".", 1)[-1], e.result) for e in journal] == [
            (1, "first#1", 10), (2, "second#1", 20), (3, "third#1", 30)]
        # the step that finished first was journaled before the one that finished last
        at = {e.key.rsplit(".", 1)[-1]: e.at for e in journal}
        assert at["third#1"] is not None and at["first#1"] is not None
        assert at["third#1"] <= at["first#1"]


async def test_plain_asyncio_gather_over_steps_fails_the_workflow() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("plain-gather", 1, workflow_id="pg-1")
        with pytest.raises(WorkflowError) as info:
            await handle.result(timeout=5)
        assert info.value.reason is Reason.WORKFLOW_FAILED
        assert info.value.details["error_type"] == "WorkflowError"
        assert "ctx.gather" in str(info.value.details["message"])
        assert app.effects == []  # neither step acted
        assert (await handle.status()).state == "failed"


async def test_now_uuid_and_random_are_the_same_when_the_execution_runs_again() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("values", None, workflow_id="values-1")
        await until(lambda: app.effects == ["wait"])
        await tc.kill(owner_index(tc, "values-1"))
        await until(lambda: len(app.seen_values) == 2)
        app.gate.set()
        now, uid, rnd = await handle.result(timeout=10)
        first, second = app.seen_values
        assert first == second  # journaled on the first run, read back on the second
        stamp, text, number = first
        assert now == dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat()
        assert uid == text and uuid.UUID(text).version == 4
        assert rnd == repr(number) and 0 <= number < 1
        kinds = [e.kind for e in await tc.client_member.workflows.journal("values-1")]
        assert kinds == ["now", "uuid", "random", "step"]
        # another execution draws its own values
        other = await tc.client_member.start("values", None, workflow_id="values-2")
        await other.result(timeout=5)
        assert app.seen_values[-1][1:] != first[1:]


async def advance(clock: TestClock, seconds: float, *, by: float = 0.25,
                  done: Callable[[], bool] = lambda: False) -> None:
    """Advance the test clock in small steps, letting the runners work in between."""
    for _ in range(round(seconds / by)):
        if done():
            return
        await clock.advance(by)
        for _ in range(20):
            await asyncio.sleep(0)


async def test_a_durable_sleep_suspends_until_the_test_clock_passes_it() -> None:
    # 60 s: well past the in-process wait (the execution suspends: journal written,
    # start message rescheduled), short enough for TestClock.advance to drive.
    clock = TestClock(START)
    app = App()
    async with TestCluster(runners=2, clock=clock, configure=app.configure) as tc:
        handle = await tc.client_member.start("sleeper", 60.0, workflow_id="nap-1")
        await until(lambda: state_is(handle, "waiting"))
        status = await handle.status()
        assert status.state == "waiting"
        assert status.waiting_for == "sleep until 2026-01-01T00:01:00+00:00"
        result = asyncio.ensure_future(handle.result(timeout=600))
        await advance(clock, 55)
        assert app.effects == [] and not result.done()  # not a moment early
        await advance(clock, 30, done=result.done)
        assert 60.0 <= await result < 61.0  # test-clock seconds between the two ctx.now()
        assert app.effects == ["after-sleep"]
        kinds = [(e.kind, e.status) for e in await tc.client_member.workflows.journal("nap-1")]
        assert kinds == [("now", "done"), ("sleep", "done"), ("step", "done"), ("now", "done")]


async def state_is(handle: covey.WorkflowHandle, state: str) -> bool:
    return (await handle.status()).state == state


async def test_a_day_long_sleep_takes_no_real_time() -> None:
    clock = TestClock(START)
    app = App()
    async with TestCluster(runners=2, clock=clock, configure=app.configure) as tc:
        handle = await tc.client_member.start("sleeper", DAY, workflow_id="nap-day")
        await until(lambda: state_is(handle, "waiting"))
        result = asyncio.ensure_future(handle.result(timeout=2 * DAY))
        await clock.jump(DAY - 60)  # every lease lapses: the runners take their shards again
        await tc.settle()
        status = await handle.status()
        assert status.state == "waiting" and app.effects == []
        for _ in range(400):  # 100 s more of test time, a quarter second at a time
            if result.done():
                break
            await clock.jump(0.25)
        assert DAY <= await result < DAY + 60
        assert app.effects == ["after-sleep"]
    # a real day would have hit the test's timeout long before
