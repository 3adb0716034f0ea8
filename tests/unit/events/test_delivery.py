"""Publishing and delivery on the in-memory TestCluster: groups, order, retries, dead letters."""

from __future__ import annotations

import asyncio

import pytest

import covey
from covey.core import ClusterError, Reason
from covey.testing import TestCluster

from .._waiting import until
from ._app import OrderPlaced, Recorder


async def test_each_group_handles_a_published_event_once() -> None:
    app = Recorder()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        event_id = await tc.client_member.publish(OrderPlaced(order_id="o-1"))
        await until(lambda: bool(app.handled("billing") and app.handled("email")))
        await tc.client_member.publish(OrderPlaced(order_id="o-2", seq=1))
        await until(lambda: len(app.handled("billing")) == 2 and len(app.handled("email")) == 2)
        assert app.handled("billing") == [("o-1", 0), ("o-2", 1)]
        assert app.handled("email") == [("o-1", 0), ("o-2", 1)]
        first = [c for c in app.contexts if c.event_id == event_id]
        assert {c.group for c in first} == {"billing", "email"}
        assert all(c.topic == "orders" and c.key == "o-1" and c.attempt == 1 for c in first)
        # the same key across retries, pods and failovers; distinct per group
        assert len({c.idempotency_key for c in first}) == 2


async def test_per_key_order_holds_across_two_runners_with_interleaved_keys() -> None:
    app = Recorder(slow=0.001)
    async with TestCluster(runners=2, configure=app.configure) as tc:
        keys = [f"k{i}" for i in range(8)]
        for seq in range(10):
            await tc.client_member.publish_many(
                [OrderPlaced(order_id=k, seq=seq) for k in keys])
        await until(lambda: all(len(app.handled(g)) == 80 for g in app.groups), timeout=10)
        for group in app.groups:
            for key in keys:
                assert app.of_key(group, key) == list(range(10)), (group, key)


async def test_a_failing_handler_is_retried_in_place_then_succeeds() -> None:
    app = Recorder()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        await tc.client_member.publish(OrderPlaced(order_id="r", seq=0, fail=2))
        await tc.client_member.publish(OrderPlaced(order_id="r", seq=1))
        await until(lambda: len(app.handled("billing")) == 2)
        assert app.of_key("billing", "r") == [0, 1]  # the key waited for its retries
        assert app.attempts[("billing", "r", 0)] == 3
        attempts = [c.attempt for c in app.contexts if c.group == "billing" and c.key == "r"]
        assert attempts == [1, 2, 3, 1]


async def test_dead_letter_after_the_last_attempt_then_the_key_moves_on() -> None:
    app = Recorder()
    async with TestCluster(runners=2, configure=app.configure) as tc:
        cluster = tc.client_member
        await cluster.publish(OrderPlaced(order_id="poison", seq=0, fail=99))
        await cluster.publish(OrderPlaced(order_id="poison", seq=1))
        for i in range(5):  # other keys flow during the retries
            await cluster.publish(OrderPlaced(order_id=f"ok{i}"))
        await until(lambda: app.of_key("billing", "poison") == [1])
        assert app.attempts[("billing", "poison", 0)] == 3  # FAST: 3 attempts
        assert {k for k, _ in app.handled("billing")} >= {f"ok{i}" for i in range(5)}
        dead = await cluster.events.dead_letters("billing")
        assert [d.key for d in dead] == ["poison"]
        assert dead[0].attempts == 3 and "ConnectionError" in dead[0].error
        assert len(dead[0].errors) == 3


async def test_publishing_refuses_what_is_not_a_valid_event() -> None:
    app = Recorder()
    async with TestCluster(runners=1, configure=app.configure) as tc:
        cluster = tc.client_member
        bad = OrderPlaced.model_construct(order_id=12, seq="x")  # type: ignore[arg-type]
        with pytest.raises(ClusterError) as caught:
            await cluster.publish(bad)
        assert caught.value.reason is Reason.INVALID_ARGUMENT
        assert caught.value.details["field"] in ("order_id", "seq")
        with pytest.raises(ClusterError) as caught:
            await cluster.publish({"order_id": "x"})  # type: ignore[arg-type]
        assert caught.value.details["field"] == "event"
        assert await cluster.events.topics() == []  # nothing stored


def test_event_class_options_are_checked_at_class_creation() -> None:
    with pytest.raises(ClusterError) as caught:
        class NoField(covey.Event, topic="t", key="missing"):
            a: int
    assert caught.value.details["field"] == "key"
    with pytest.raises(ClusterError) as caught:
        class BadTopic(covey.Event, topic="no spaces"):
            a: int
    assert caught.value.details["field"] == "topic"
    with pytest.raises(ClusterError) as caught:
        class BadVersion(covey.Event, topic="t", version=0):
            a: int
    assert caught.value.details["field"] == "version"

    class Named(covey.Event, topic="t", name="renamed", version=2):
        a: int
    assert Named.__covey_event_type__ == "renamed" and Named.covey_version == 2


def test_bad_subscriptions_are_refused_at_declaration() -> None:
    cluster = covey.Cluster(storage=covey.open_storage(covey.CoveyConfig(
        database_url="memory://")))

    async def handler(event: OrderPlaced, ctx: covey.EventContext) -> None: ...

    for kwargs, field in [({"group": "has space"}, "group"),
                          ({"group": "g", "concurrency": 0}, "concurrency"),
                          ({"group": "g", "start": "middle"}, "start"),
                          ({"group": "g", "retry": 3}, "retry")]:
        with pytest.raises(ClusterError) as caught:
            cluster.subscribe(OrderPlaced, **kwargs)(handler)  # type: ignore[arg-type]
        assert caught.value.details["field"] == field
    with pytest.raises(ClusterError) as caught:
        cluster.subscribe(dict, group="g")(handler)  # type: ignore[arg-type]
    assert caught.value.details["field"] == "event"
    cluster.subscribe(OrderPlaced, group="g")(handler)
    with pytest.raises(ClusterError) as caught:
        cluster.subscribe(OrderPlaced, group="g")(handler)
    assert caught.value.details["field"] == "group"


async def test_a_key_holds_at_most_its_lane_capacity_in_memory_and_reads_the_rest_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from covey.events import _runner

    monkeypatch.setattr(_runner, "LANE_CAPACITY", 3)
    monkeypatch.setattr(_runner, "BACKLOG_LIMIT", 2)
    deferred: list[int] = []
    real = _runner.Deferred

    def counted() -> object:
        deferred.append(1)
        return real()

    monkeypatch.setattr(_runner, "Deferred", counted)
    app = Recorder(slow=0.02)
    async with TestCluster(runners=1, configure=app.configure) as tc:
        for seq in range(12):  # pushed faster than the key's handler runs
            await tc.client_member.publish(OrderPlaced(order_id="busy", seq=seq))
        runner = tc.runners[0]._runner
        assert runner is not None and runner.event_runner is not None
        lanes = runner.event_runner.lanes
        peak = 0
        for _ in range(400):
            peak = max([peak, *(len(lane.pending) for lane in lanes.values())])
            if all(len(app.handled(g)) == 12 for g in app.groups):
                break
            await asyncio.sleep(0.01)
        for group in app.groups:
            assert app.of_key(group, "busy") == list(range(12)), group
        assert peak <= 3 + 2  # the capacity, plus one backlog read
        assert deferred  # some deliveries were left stored and read back
