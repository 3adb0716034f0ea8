"""Bad input is refused where it is given, naming what is wrong, storing nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel

import covey
from covey.core import ClusterError, Reason, SerializationError, WorkflowError
from covey.testing import TestCluster


class Order(BaseModel):
    id: str
    amount: int


async def noop() -> None:
    return None


MISUSES: dict[str, tuple[Callable[[covey.WorkflowContext], Awaitable[Any]], str]] = {
    "step-not-callable": (lambda ctx: ctx.step(42), "fn"),  # type: ignore[arg-type]
    "step-bad-retry": (lambda ctx: ctx.step(noop, retry=3), "retry"),  # type: ignore[arg-type]
    "step-bad-timeout": (lambda ctx: ctx.step(noop, timeout=-1), "timeout"),
    "step-awaited-twice": (lambda ctx: _twice(ctx), "step"),
    "gather-not-a-step": (lambda ctx: ctx.gather(42), "steps"),  # type: ignore[arg-type]
    "sleep-negative": (lambda ctx: ctx.sleep(-5), "duration"),
    "sleep-infinite": (lambda ctx: ctx.sleep(float("inf")), "duration"),
    "sleep-not-a-duration": (lambda ctx: ctx.sleep("a day"), "duration"),  # type: ignore[arg-type]
    "recv-reserved-topic": (lambda ctx: ctx.recv("__child__:x", timeout=1), "topic"),
    "recv-empty-topic": (lambda ctx: ctx.recv("", timeout=1), "topic"),
    "set-event-empty-key": (lambda ctx: ctx.set_event("", 1), "key"),
    "child-bad-id": (lambda ctx: ctx.start_child("order", {"id": "x", "amount": 1},
                                                 workflow_id=""), "workflow_id"),
}


async def _twice(ctx: covey.WorkflowContext) -> None:
    call = ctx.step(noop)
    await call
    await call


class App:
    def __init__(self) -> None:
        self.ran: list[str] = []

    def configure(self, cluster: covey.Cluster) -> None:
        @cluster.workflow("order")
        async def order(ctx: covey.WorkflowContext, o: Order) -> int:
            self.ran.append(o.id)
            return o.amount

        @cluster.workflow("misuse")
        async def misuse(ctx: covey.WorkflowContext, what: str) -> None:
            await MISUSES[what][0](ctx)


async def test_a_payload_that_does_not_validate_is_refused_and_nothing_is_stored() -> None:
    app = App()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        client = tc.client_member
        cases: list[tuple[Any, list[str]]] = [
            ({"id": "o-1", "amount": "lots"}, ["amount"]),
            ({"id": "o-1"}, ["amount"]),
            ({"amount": 3}, ["id"]),
            (5, ["<root>"]),
        ]
        for payload, fields in cases:
            with pytest.raises(SerializationError) as info:
                await client.start("order", payload, workflow_id="o-1")
            assert info.value.reason is Reason.PAYLOAD_INVALID
            # the runtime names the fields in details["fields"] (a list)
            assert info.value.details["fields"] == fields
            assert info.value.details["type"] == "Order"
        with pytest.raises(WorkflowError) as missing:
            await client.workflows.status("o-1")
        assert missing.value.reason is Reason.WORKFLOW_NOT_FOUND
        assert await client.workflows.list() == []
        assert app.ran == []
        # the same id is free for a valid start
        handle = await client.start("order", Order(id="o-1", amount=3), workflow_id="o-1")
        assert await handle.result(timeout=5) == 3 and not handle.duplicate


async def test_an_undeclared_workflow_is_refused() -> None:
    async with TestCluster(runners=1, configure=App().configure) as tc:
        client = tc.client_member
        with pytest.raises(WorkflowError) as info:
            await client.start("no-such-workflow", {}, workflow_id="x-1")
        assert info.value.reason is Reason.UNKNOWN_WORKFLOW
        assert info.value.details["name"] == "no-such-workflow"
        with pytest.raises(ClusterError) as bad:
            await client.start(123, {}, workflow_id="x-1")  # type: ignore[call-overload]
        assert (bad.value.reason, bad.value.details["field"]) == (
            Reason.INVALID_ARGUMENT, "workflow")
        with pytest.raises(WorkflowError) as missing:
            await client.workflows.status("x-1")
        assert missing.value.reason is Reason.WORKFLOW_NOT_FOUND


@pytest.mark.parametrize("workflow_id", [123, b"o-1", "", "a\x00b", "x" * 1025, "\ud800"])
async def test_a_bad_workflow_id_is_refused_everywhere(workflow_id: Any) -> None:
    async with TestCluster(runners=1, configure=App().configure) as tc:
        client = tc.client_member
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: client.start("order", Order(id="o", amount=1), workflow_id=workflow_id),
            lambda: client.send(workflow_id, "topic", 1),
            lambda: client.get_event(workflow_id, "key"),
            lambda: client.workflows.status(workflow_id),
            lambda: client.workflows.journal(workflow_id),
            lambda: client.workflows.cancel(workflow_id),
            lambda: client.workflows.resume(workflow_id),
        ]
        for call in calls:
            with pytest.raises(ClusterError) as info:
                await call()
            assert info.value.reason is Reason.INVALID_ARGUMENT
            assert info.value.details["field"] == "workflow_id"
        with pytest.raises(ClusterError):
            client.workflows.handle(workflow_id)
        assert await client.workflows.list() == []


async def test_bad_arguments_to_the_outside_api_are_refused() -> None:
    async with TestCluster(runners=1, configure=App().configure) as tc:
        client = tc.client_member
        await (await client.start("order", Order(id="o", amount=1), workflow_id="o")).result()
        cases: list[tuple[Callable[[], Awaitable[Any]], str]] = [
            (lambda: client.send("o", "", 1), "topic"),
            (lambda: client.send("o", "__child__:o", 1), "topic"),
            (lambda: client.send("o", 5, 1), "topic"),  # type: ignore[arg-type]
            (lambda: client.send("o", "t", 1, idempotency_key=""), "idempotency_key"),
            (lambda: client.get_event("o", "k", timeout=-1), "timeout"),
            (lambda: client.workflows.list(limit=0), "limit"),
            (lambda: client.workflows.list(limit=True), "limit"),
            (lambda: client.workflows.handle("o").result(timeout=float("nan")), "timeout"),
        ]
        for call, field in cases:
            with pytest.raises(ClusterError) as info:
                await call()
            assert (info.value.reason, info.value.details.get("field")) == (
                Reason.INVALID_ARGUMENT, field)
        with pytest.raises(SerializationError):
            await client.send("o", "t", object())  # not serializable
        for token in (5, None, "", "a.b", "x" * 5000):
            with pytest.raises(WorkflowError) as refused:
                await client.resolve(token, 1)  # type: ignore[arg-type]
            assert refused.value.reason is Reason.TOKEN_INVALID
        with pytest.raises(ClusterError) as info:
            await client.workflows.resume("o")  # completed, not parked
        assert info.value.reason is Reason.INVALID_TRANSITION


async def test_a_bad_event_key_or_state_filter_is_refused() -> None:
    async with TestCluster(runners=1, configure=App().configure) as tc:
        client = tc.client_member
        await (await client.start("order", Order(id="o", amount=1), workflow_id="o")).result()
        for key in ("", 5):
            with pytest.raises(ClusterError) as info:
                await client.get_event("o", key)  # type: ignore[arg-type]
            assert info.value.details.get("field") == "key"
        with pytest.raises(ClusterError) as info:
            await client.workflows.list(state="finished-ish")
        assert info.value.details.get("field") == "state"


@pytest.mark.parametrize("what", sorted(MISUSES))
async def test_misusing_ctx_fails_the_workflow_naming_the_argument(what: str) -> None:
    # the failure reaches result() as workflow_failed; the ctx error's own reason
    # (invalid_argument) and field survive only in its message
    async with TestCluster(runners=1, configure=App().configure) as tc:
        handle = await tc.client_member.start("misuse", what, workflow_id=f"misuse-{what}")
        with pytest.raises(WorkflowError) as info:
            await handle.result(timeout=5)
        assert info.value.reason is Reason.WORKFLOW_FAILED
        assert info.value.details["error_type"] == "ClusterError"
        assert str(info.value.details["message"]).startswith(f"invalid {MISUSES[what][1]}:")
        assert (await handle.status()).state == "failed"


BAD_DECLARATIONS: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"name": "x" * 256}, "name"),
    ({"name": "a\x00b"}, "name"),
    ({"name": "w", "version": 0}, "version"),
    ({"name": "w", "version": -1}, "version"),
    ({"name": "w", "version": "1"}, "version"),
    ({"name": "w", "version": True}, "version"),
    ({"name": "w", "version": 1.5}, "version"),
    ({"name": "w", "version": None}, "version"),
]


@pytest.mark.parametrize(("options", "field"), BAD_DECLARATIONS)
def test_a_bad_name_or_version_is_refused_when_declared(options: dict[str, Any],
                                                        field: str) -> None:
    cluster = covey.Cluster(covey.CoveyConfig(database_url="memory://"))
    with pytest.raises(ClusterError) as info:
        cluster.workflow(**options)
    assert (info.value.reason, info.value.details["field"]) == (Reason.INVALID_ARGUMENT, field)


def _sync(ctx: covey.WorkflowContext, payload: int) -> None:
    return None


async def _one(ctx: covey.WorkflowContext) -> None:
    return None


async def _three(ctx: covey.WorkflowContext, payload: int, more: int) -> None:
    return None


async def _unresolved(ctx: covey.WorkflowContext, payload: NotDefined) -> None:  # type: ignore[name-defined]  # noqa: F821
    return None


@pytest.mark.parametrize("fn", [_sync, _one, _three, _unresolved, lambda ctx, p: None, None, 5],
                         ids=["sync", "one-param", "three-params", "unresolved-annotation",
                              "lambda", "none", "int"])
def test_a_function_that_is_not_an_async_ctx_payload_function_is_refused(fn: Any) -> None:
    cluster = covey.Cluster(covey.CoveyConfig(database_url="memory://"))
    with pytest.raises(ClusterError) as info:
        cluster.workflow("w")(fn)
    assert (info.value.reason, info.value.details["field"]) == (Reason.INVALID_ARGUMENT, "fn")


async def _keyword_only(ctx: covey.WorkflowContext, *, payload: int) -> None:
    return None


def test_a_keyword_only_payload_is_refused_when_declared() -> None:
    cluster = covey.Cluster(covey.CoveyConfig(database_url="memory://"))
    with pytest.raises(ClusterError) as info:
        cluster.workflow("w")(_keyword_only)
    assert info.value.details["field"] == "fn"


def test_a_name_declared_twice_is_refused() -> None:
    cluster = covey.Cluster(covey.CoveyConfig(database_url="memory://"))

    @cluster.workflow("twice")
    async def first(ctx: covey.WorkflowContext, payload: int) -> None:
        return None

    with pytest.raises(ClusterError) as info:
        @cluster.workflow("twice", version=2)
        async def second(ctx: covey.WorkflowContext, payload: int) -> None:
            return None
    assert (info.value.reason, info.value.details["field"]) == (Reason.INVALID_ARGUMENT, "name")
    assert first.name == "twice" and first.version == 1

