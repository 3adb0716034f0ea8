"""Changing a workflow's code under running executions: ``ctx.patched``, the
nondeterminism check that parks an execution, and ``resume`` after a fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import covey
from covey.core import ClusterError, Reason, WorkflowError
from covey.testing import TestCluster
from tests.unit._waiting import until

from . import owner_index


class App:
    """Declares the ``approval`` workflow on every member, in the variant of the code
    :attr:`code` names (what is deployed), and records each effect."""

    def __init__(self, code: str = "v1") -> None:
        self.code = code
        self.effects: list[str] = []

    def configure(self, cluster: covey.Cluster) -> None:
        async def record(what: str) -> None:
            self.effects.append(what)

        @cluster.workflow("approval", version=2)
        async def approval(ctx: covey.WorkflowContext, who: str) -> dict[str, Any]:
            out: dict[str, Any] = {"version": ctx.version}
            if self.code == "v2":  # v2 sends an SMS first, where v1 did nothing
                out["sms"] = await ctx.patched("send-sms")
                if out["sms"]:
                    await ctx.step(record, f"sms:{who}", name="sms")
            # "broken" renamed the first step: executions that took it do not fit
            await ctx.step(record, f"ask:{who}", name="notify" if self.code == "broken" else "ask")
            out["answer"] = await ctx.recv("answer")
            if self.code == "v2":  # a patch no execution has passed yet
                out["audit"] = await ctx.patched("audit-log")
            await ctx.step(record, f"done:{who}", name="done")
            return out


async def journal_has_waiting_recv(client: covey.Cluster, workflow_id: str) -> bool:
    journal = await client.workflows.journal(workflow_id)
    return any(e.kind == "recv" and e.status == "waiting" for e in journal)


async def test_patched_is_false_for_an_execution_that_passed_it_and_true_for_new_ones(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deploy.db'}"
    old = App("v1")
    async with TestCluster(runners=2, configure=old.configure, database_url=url) as tc:
        await tc.client_member.start("approval", "ann", workflow_id="old-1")
        await until(lambda: journal_has_waiting_recv(tc.client_member, "old-1"))
    assert old.effects == ["ask:ann"]
    # a deploy: the same store, the new code
    new = App("v2")
    async with TestCluster(runners=2, configure=new.configure, database_url=url) as tc:
        client = tc.client_member
        fresh = await client.start("approval", "bob", workflow_id="new-1")
        await client.send("old-1", "answer", "yes")
        await client.send("new-1", "answer", "no")
        assert await client.workflows.handle("old-1").result(timeout=10) == {
            "version": 2, "sms": False, "answer": "yes", "audit": True}
        assert await fresh.result(timeout=10) == {
            "version": 2, "sms": True, "answer": "no", "audit": True}
        assert sorted(new.effects) == ["ask:bob", "done:ann", "done:bob", "sms:bob"]
        old_kinds = [(e.key, e.kind) for e in await client.workflows.journal("old-1")]
        assert old_kinds == [("ask#1", "step"), ("recv:answer#1", "recv"),
                             ("patch:audit-log", "patch"), ("done#1", "step")]
        new_kinds = [(e.key, e.kind) for e in await client.workflows.journal("new-1")]
        assert new_kinds == [("patch:send-sms", "patch"), ("sms#1", "step"),
                             ("ask#1", "step"), ("recv:answer#1", "recv"),
                             ("patch:audit-log", "patch"), ("done#1", "step")]


async def test_a_journal_that_does_not_fit_parks_the_execution_until_resumed() -> None:
    app = App("v1")
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("approval", "ann", workflow_id="park-1")
        await until(lambda: journal_has_waiting_recv(client, "park-1"))
        with pytest.raises(ClusterError) as info:  # only a parked execution resumes
            await client.workflows.resume("park-1")
        assert info.value.reason is Reason.INVALID_TRANSITION
        app.code = "broken"  # a bad deploy; the execution runs again on the survivor
        await tc.kill(owner_index(tc, "park-1"))
        with pytest.raises(WorkflowError) as failure:
            await handle.result(timeout=10)
        assert failure.value.reason is Reason.NONDETERMINISM
        assert failure.value.details["state"] == "failed_nondeterministic"
        status = await handle.status()
        assert status.state == "failed_nondeterministic"
        assert app.effects == ["ask:ann"]  # the renamed step did not act
        app.code = "v1"  # the fix
        resumed = await client.workflows.resume("park-1")
        assert resumed.state != "failed_nondeterministic"
        await until(lambda: journal_has_waiting_recv(client, "park-1"))
        await client.send("park-1", "answer", "yes")
        assert await handle.result(timeout=10) == {"version": 2, "answer": "yes"}
        assert app.effects == ["ask:ann", "done:ann"]  # ask ran once, across all runs
        assert (await handle.status()).state == "completed"


async def test_an_execution_of_a_newer_version_is_left_to_newer_runners() -> None:
    versions = iter([1, 1, 2])  # two runners on version 1; the client declares 2
    effects: list[str] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.workflow("greet", version=next(versions))
        async def greet(ctx: covey.WorkflowContext, who: str) -> str:
            effects.append(who)
            return f"hello {who} from v{ctx.version}"

    async with TestCluster(runners=2, configure=configure) as tc:
        handle = await tc.client_member.start("greet", "ann", workflow_id="greet-1")

        async def left_for_later() -> bool:
            records = await tc.storage.messages.list_messages("covey.Workflow", tag="start")
            return any("newer" in (r.last_error or "") for r in records)

        await until(left_for_later)
        status = await handle.status()
        assert (status.state, status.version) == ("pending", 2)
        assert effects == []


async def test_a_message_sent_to_a_parked_execution_is_kept_for_after_the_fix() -> None:
    app = App("v1")
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("approval", "ann", workflow_id="park-2")
        await until(lambda: journal_has_waiting_recv(client, "park-2"))
        app.code = "broken"
        await tc.kill(owner_index(tc, "park-2"))
        await until(lambda: _state_is(handle, "failed_nondeterministic"))
        await client.send("park-2", "answer", "yes")
        app.code = "v1"
        await client.workflows.resume("park-2")
        assert await handle.result(timeout=10) == {"version": 2, "answer": "yes"}


async def _state_is(handle: covey.WorkflowHandle, state: str) -> bool:
    return (await handle.status()).state == state


class OrderV1(BaseModel):
    quantity: int


class OrderV2(BaseModel):
    covey_version: ClassVar[int] = 2
    qty: int
    note: str = ""


@covey.upcaster(OrderV2, from_version=1)
def _order_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"qty": data["quantity"], "note": "from v1"}


def _payload_app(model: type[BaseModel]) -> Callable[[covey.Cluster], None]:
    async def evolving(ctx: covey.WorkflowContext, order: Any) -> str:
        await ctx.recv("go")
        return repr(order)

    evolving.__annotations__["order"] = model  # this module's annotations are strings

    def configure(cluster: covey.Cluster) -> None:
        cluster.workflow("evolving")(evolving)

    return configure


async def test_a_payload_of_an_older_model_version_is_upcast_when_it_runs_again(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'evolve.db'}"
    async with TestCluster(runners=1, configure=_payload_app(OrderV1), database_url=url) as tc:
        handle = await tc.client_member.start("evolving", OrderV1(quantity=3), workflow_id="e1")
        await until(lambda: _waiting(handle))
    async with TestCluster(runners=1, configure=_payload_app(OrderV2), database_url=url) as tc:
        await tc.client_member.send("e1", "go", None)
        assert await tc.client_member.workflows.handle("e1").result(timeout=10) == \
            "OrderV2(qty=3, note='from v1')"


async def _waiting(handle: covey.WorkflowHandle) -> bool:
    return bool([e for e in await handle._workflows.journal(handle.id) if e.kind == "recv"])
