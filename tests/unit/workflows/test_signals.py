"""Talking to running workflows: send/recv, events, awakeables, child workflows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import covey
from covey.core import ClusterError, Reason, WorkflowError
from covey.testing import TestCluster
from tests.unit._waiting import until

from . import owner_index


class App:
    """Declares the test workflows on every member and records each effect."""

    def __init__(self) -> None:
        self.effects: list[str] = []
        self.gate = asyncio.Event()

    def configure(self, cluster: covey.Cluster) -> None:
        @cluster.workflow("inbox")
        async def inbox(ctx: covey.WorkflowContext, timeouts: list[float]) -> list[Any]:
            return [await ctx.recv("approval", timeout=t) for t in timeouts]

        async def wait_gate() -> None:
            self.effects.append("wait")
            await self.gate.wait()

        @cluster.workflow("relay")
        async def relay(ctx: covey.WorkflowContext, _: None) -> list[Any]:
            first = await ctx.recv("m", timeout=4)
            await ctx.step(wait_gate)
            second = await ctx.recv("m", timeout=4)
            return [first, second]

        @cluster.workflow("publisher")
        async def publisher(ctx: covey.WorkflowContext, _: None) -> str:
            await ctx.set_event("status", "reserved")
            go = await ctx.recv("go", timeout=4)
            await ctx.set_event("status", "shipped")
            return str(go)

        @cluster.workflow("callback")
        async def callback(ctx: covey.WorkflowContext, _: None) -> Any:
            awakeable = await ctx.awakeable()
            await ctx.set_event("token", awakeable.token)
            return await awakeable.result(timeout=4)

        async def record(what: str) -> None:
            self.effects.append(what)

        @cluster.workflow("child")
        async def child(ctx: covey.WorkflowContext, n: int) -> int:
            await ctx.step(record, f"child:{n}")
            if n < 0:
                raise ValueError(f"{n} is negative")
            if n == 0:
                await ctx.recv("finish")  # waits until told (or cancelled)
            return n * 2

        @cluster.workflow("parent")
        async def parent(ctx: covey.WorkflowContext, n: int) -> dict[str, Any]:
            handle = await ctx.start_child(child, n)
            try:
                return {"child": handle.workflow_id, "result": await handle.result()}
            except WorkflowError as exc:
                return {"child": handle.workflow_id,
                        "error": [exc.reason.value, exc.details.get("error_type"),
                                  exc.details.get("message")]}

        @cluster.workflow("guardian")
        async def guardian(ctx: covey.WorkflowContext, _: None) -> None:
            attached = await ctx.start_child(child, 0, workflow_id="attached-kid")
            await ctx.start_child(child, 0, workflow_id="detached-kid", detached=True)
            await ctx.step(record, "guardian-waits")
            await attached.result()


async def test_sends_are_received_in_order_once_and_deduplicated_by_key() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("inbox", [4.0, 4.0, 0.2], workflow_id="inbox-1")
        await client.send("inbox-1", "approval", {"by": "ann"}, idempotency_key="req-1")
        await client.send("inbox-1", "approval", {"by": "ann"}, idempotency_key="req-1")
        with pytest.raises(ClusterError) as info:  # the key stands for the first payload
            await client.send("inbox-1", "approval", {"by": "eve"}, idempotency_key="req-1")
        assert info.value.reason is Reason.IDEMPOTENCY_CONFLICT
        await client.send("inbox-1", "approval", "bob")
        # the third recv finds nothing within its timeout: None
        assert await handle.result(timeout=5) == [{"by": "ann"}, "bob", None]
        journal = await client.workflows.journal("inbox-1")
        assert [(e.key, e.kind, e.status, e.result) for e in journal] == [
            ("recv:approval#1", "recv", "done", {"by": "ann"}),
            ("recv:approval#2", "recv", "done", "bob"),
            ("recv:approval#3", "recv", "done", None)]


async def test_a_received_message_is_not_received_again_after_a_crash() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("relay", None, workflow_id="relay-1")
        await client.send("relay-1", "m", "x")
        await client.send("relay-1", "m", "y")
        await until(lambda: app.effects == ["wait"])
        await tc.kill(owner_index(tc, "relay-1"))
        await until(lambda: app.effects == ["wait", "wait"])  # ran again on the survivor
        app.gate.set()
        assert await handle.result(timeout=10) == ["x", "y"]


async def test_a_send_to_an_ended_or_unknown_workflow_is_refused() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("inbox", [0.05], workflow_id="inbox-2")
        assert await handle.result(timeout=5) == [None]
        with pytest.raises(WorkflowError) as info:
            await client.send("inbox-2", "approval", "late")
        assert info.value.reason is Reason.WORKFLOW_FINISHED
        with pytest.raises(WorkflowError) as info:
            await client.send("no-such-workflow", "approval", "lost")
        assert info.value.reason is Reason.WORKFLOW_NOT_FOUND
        with pytest.raises(WorkflowError) as info:
            await client.workflows.status("no-such-workflow")
        assert info.value.reason is Reason.WORKFLOW_NOT_FOUND  # the send stored nothing


async def test_events_are_published_and_read_with_a_timeout() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("publisher", None, workflow_id="pub-1")
        assert await client.get_event("pub-1", "status", timeout=5) == "reserved"
        assert await client.get_event("pub-1", "missing", timeout=0.1) is None
        await client.send("pub-1", "go", "now")
        assert await handle.result(timeout=5) == "now"
        assert await client.get_event("pub-1", "status") == "shipped"  # the latest value
        # an ended workflow publishes nothing more: None without waiting the timeout
        assert await asyncio.wait_for(
            client.get_event("pub-1", "missing", timeout=30), timeout=5) is None


async def test_an_awakeable_is_resolved_by_its_token_and_a_forged_one_is_refused() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("callback", None, workflow_id="cb-1")
        token = await client.get_event("cb-1", "token", timeout=5)
        assert isinstance(token, str)
        body, mac = token.split(".")
        for forged in (_flip(body, len(body) // 2) + "." + mac,
                       body + "." + _flip(mac, 3), "", "not a token", token + "x"):
            with pytest.raises(WorkflowError) as info:
                await client.resolve(forged, "forged")
            assert info.value.reason is Reason.TOKEN_INVALID, forged
        assert (await handle.status()).state in ("running", "waiting")
        await client.resolve(token, {"approved": True})
        assert await handle.result(timeout=5) == {"approved": True}


def _flip(text: str, index: int) -> str:
    """``text`` with the character at ``index`` changed."""
    swapped = "B" if text[index] == "A" else "A"
    return text[:index] + swapped + text[index + 1:]


async def test_a_parent_awaits_its_child_whose_id_is_deterministic() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("parent", 21, workflow_id="p-1")
        assert await handle.result(timeout=5) == {"child": "p-1/child:child#1", "result": 42}
        child = await client.workflows.status("p-1/child:child#1")
        assert (child.name, child.state) == ("child", "completed")
        assert app.effects == ["child:21"]
        kinds = [e.kind for e in await client.workflows.journal("p-1")]
        assert kinds == ["start_child", "child"]


async def test_a_child_failure_raises_in_the_parent() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        handle = await tc.client_member.start("parent", -1, workflow_id="p-2")
        assert await handle.result(timeout=5) == {
            "child": "p-2/child:child#1",
            "error": ["workflow_failed", "ValueError", "-1 is negative"]}
        assert (await tc.client_member.workflows.status("p-2/child:child#1")).state == "failed"


async def test_cancelling_a_parent_cancels_its_attached_child_only() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("guardian", None, workflow_id="g-1")
        await until(lambda: "guardian-waits" in app.effects and app.effects.count("child:0") == 2)
        await handle.cancel()  # returns once the cancel is recorded, not when it ended
        with pytest.raises(WorkflowError) as info:
            await handle.result(timeout=5)
        assert info.value.reason is Reason.WORKFLOW_CANCELLED
        assert (await handle.status()).state == "cancelled"

        async def attached_cancelled() -> bool:
            return (await client.workflows.status("attached-kid")).state == "cancelled"

        await until(attached_cancelled)
        detached = await client.workflows.status("detached-kid")
        assert detached.state in ("running", "waiting")
        await client.send("detached-kid", "finish", None)
        assert await client.workflows.handle("detached-kid").result(timeout=5) == 0


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


async def test_a_string_that_is_not_the_issued_token_is_refused() -> None:
    app = App()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        client = tc.client_member
        handle = await client.start("callback", None, workflow_id="cb-2")
        token = await client.get_event("cb-2", "token", timeout=5)
        assert isinstance(token, str)
        # a 16-byte MAC is 22 characters, the last carrying 2 bits and 4 unused ones
        last = ALPHABET[ALPHABET.index(token[-1]) ^ 1]
        for forged in (token[:-1] + last, token + "=="):
            assert forged != token
            with pytest.raises(WorkflowError) as info:
                await client.resolve(forged, "forged")
            assert info.value.reason is Reason.TOKEN_INVALID
        await client.resolve(token, "real")
        assert await handle.result(timeout=5) == "real"
