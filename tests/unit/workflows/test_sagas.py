"""Sagas: compensations (newest first, once each, only for steps that started) and
finalizers (once, whatever the outcome)."""

from __future__ import annotations

import asyncio

import pytest

import covey
from covey.core import Reason, WorkflowError
from covey.testing import TestCluster
from tests.unit._waiting import until

from . import owner_index

TWICE = covey.Retry(max_attempts=2, backoff=covey.exponential(0.01, 0.01), jitter=False)


class App:
    """Declares the trip workflow on every member and records each effect.

    A plan is a list of items: a name books it (a step with a compensation),
    ``"wait"`` blocks on :attr:`gate` (a step without one), ``"recv"`` waits for a
    message ``go``.
    """

    def __init__(self) -> None:
        self.effects: list[str] = []
        self.sold_out: set[str] = set()
        self.undo_failures: dict[str, int] = {}
        self.gate = asyncio.Event()

    def configure(self, cluster: covey.Cluster) -> None:
        async def book(item: str) -> str:
            self.effects.append(f"book:{item}")
            if item in self.sold_out:
                raise RuntimeError(f"{item} sold out")
            return f"{item}-ok"

        async def unbook(item: str) -> None:
            self.effects.append(f"undo:{item}")
            left = self.undo_failures.get(item, 0)
            if left:
                self.undo_failures[item] = left - 1
                raise ConnectionError(f"cannot undo {item}")

        def finalize(workflow_id: str) -> None:
            self.effects.append(f"final:{workflow_id}")

        async def wait_gate() -> None:
            self.effects.append("wait")
            await self.gate.wait()

        @cluster.workflow("trip")
        async def trip(ctx: covey.WorkflowContext, plan: list[str]) -> str:
            ctx.finalizer(finalize, ctx.workflow_id)
            for item in plan:
                if item == "wait":
                    await ctx.step(wait_gate)
                elif item == "recv":
                    await ctx.recv("go")
                else:
                    await ctx.step(book, item, compensate=unbook, retry=TWICE, name=item)
            return "booked"


async def failure_of(handle: covey.WorkflowHandle) -> WorkflowError:
    with pytest.raises(WorkflowError) as info:
        await handle.result(timeout=10)
    return info.value


async def test_a_failure_compensates_started_steps_newest_first_once_each() -> None:
    app = App()
    app.sold_out = {"car"}
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("trip", ["flight", "hotel", "car", "tour"],
                                              workflow_id="trip-1")
        error = await failure_of(handle)
        # car was tried twice (its retry) and may have acted: it is compensated too;
        # tour never started: it is not
        assert app.effects == ["book:flight", "book:hotel", "book:car", "book:car",
                               "undo:car", "undo:hotel", "undo:flight", "final:trip-1"]
        assert error.reason is Reason.WORKFLOW_FAILED
        assert error.details["state"] == "compensated"
        assert error.details["error_type"] == "RuntimeError"
        assert error.details["message"] == "car sold out"
        assert error.details["step"] == "car#1"
        assert error.details["compensation_errors"] == []
        assert (await handle.status()).state == "compensated"
        journal = await tc.client_member.workflows.journal("trip-1")
        *entries, final = journal
        assert [(e.key, e.kind, e.status) for e in entries] == [
            ("flight#1", "step", "done"), ("hotel#1", "step", "done"),
            ("car#1", "step", "failed"),
            ("car#1:compensate", "compensate", "done"),
            ("hotel#1:compensate", "compensate", "done"),
            ("flight#1:compensate", "compensate", "done")]
        assert (final.kind, final.status) == ("finalizer", "done")
        assert final.key.endswith("finalize")


async def test_a_failing_compensation_does_not_stop_the_others() -> None:
    app = App()
    app.sold_out = {"car"}
    app.undo_failures = {"hotel": 5, "flight": 1}  # hotel for good, flight once (retried)
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("trip", ["flight", "hotel", "car"],
                                              workflow_id="trip-2")
        error = await failure_of(handle)
        assert app.effects == ["book:flight", "book:hotel", "book:car", "book:car",
                               "undo:car", "undo:hotel", "undo:hotel",
                               "undo:flight", "undo:flight", "final:trip-2"]
        assert error.details["state"] == "failed"  # not every compensation succeeded
        assert error.details["error_type"] == "RuntimeError"
        # the runtime reports each failed compensation as "step: type: message"
        assert error.details["compensation_errors"] == [
            "hotel#1:compensate: ConnectionError: cannot undo hotel"]
        assert "cannot undo hotel" in str(error)
        assert (await handle.status()).state == "failed"


async def test_a_success_runs_the_finalizer_once_and_no_compensation() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("trip", ["flight", "hotel"], workflow_id="trip-3")
        assert await handle.result(timeout=5) == "booked"
        assert app.effects == ["book:flight", "book:hotel", "final:trip-3"]
        assert (await handle.status()).state == "completed"


async def test_a_cancel_compensates_every_booked_step_and_finalizes_once() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("trip", ["flight", "hotel", "recv", "car"],
                                              workflow_id="trip-4")
        await until(lambda: app.effects == ["book:flight", "book:hotel"])
        await handle.cancel()
        error = await failure_of(handle)
        assert error.reason is Reason.WORKFLOW_CANCELLED
        assert error.details["state"] == "cancelled"
        assert app.effects == ["book:flight", "book:hotel", "undo:hotel", "undo:flight",
                               "final:trip-4"]
        assert (await handle.status()).state == "cancelled"
        await handle.cancel()  # a second cancel of an ended execution changes nothing
        assert app.effects.count("final:trip-4") == 1
        assert all(runner.crashed is None for runner in tc.runners)


async def test_a_cancel_before_the_first_run_runs_nothing_but_the_finalizer() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("trip", ["recv", "flight"], workflow_id="trip-5")
        await handle.cancel()
        error = await failure_of(handle)
        assert error.reason is Reason.WORKFLOW_CANCELLED
        assert app.effects == ["final:trip-5"]


async def test_compensations_and_the_finalizer_run_once_across_a_crash() -> None:
    app = App()
    app.sold_out = {"car"}
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("trip", ["flight", "wait", "car"],
                                              workflow_id="trip-6")
        await until(lambda: app.effects == ["book:flight", "wait"])
        await tc.kill(owner_index(tc, "trip-6"))
        await until(lambda: app.effects.count("wait") == 2)  # the body ran again
        app.gate.set()
        error = await failure_of(handle)
        assert error.details["state"] == "compensated"
        # flight's compensation and the finalizer were registered by both runs
        assert app.effects == ["book:flight", "wait", "wait", "book:car", "book:car",
                               "undo:car", "undo:flight", "final:trip-6"]
