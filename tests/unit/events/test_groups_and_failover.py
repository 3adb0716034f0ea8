"""The events singleton (new groups, replays, stale publishers) and runner failover."""

from __future__ import annotations

import pytest

from covey.testing import TestCluster

from .._waiting import until
from ._app import OrderPlaced, Recorder


async def test_a_new_earliest_group_gets_the_earlier_events_a_latest_one_does_not() -> None:
    app = Recorder(groups=())
    async with TestCluster(runners=0, configure=app.configure) as tc:
        for i in range(3):
            await tc.client_member.publish(OrderPlaced(order_id=f"o{i}"))
        first = Recorder(groups=("late-e",), start="earliest")
        second = Recorder(groups=("late-l",), start="latest")
        app.extra = lambda c: (first.configure(c), second.configure(c))
        await tc.add_runner()
        await tc.add_runner()
        await until(lambda: len(first.handled("late-e")) == 3)  # backfilled by the singleton
        await tc.client_member.publish(OrderPlaced(order_id="after"))
        await until(lambda: len(first.handled("late-e")) == 4
                    and len(second.handled("late-l")) == 1)
        assert second.handled("late-l") == [("after", 0)]
        assert sorted(first.handled("late-e")) == [("after", 0), ("o0", 0), ("o1", 0),
                                                     ("o2", 0)]


async def test_replay_delivers_again() -> None:
    app = Recorder(groups=("billing", "email"))
    async with TestCluster(runners=2, configure=app.configure) as tc:
        cluster = tc.client_member
        await cluster.publish_many([OrderPlaced(order_id="a", seq=i) for i in range(3)])
        await until(lambda: len(app.handled("billing")) == 3 and len(app.handled("email")) == 3)
        await cluster.events.replay("billing", from_position=0)
        await until(lambda: len(app.handled("billing")) == 6)
        assert app.of_key("billing", "a") == [0, 1, 2, 0, 1, 2]
        assert len(app.handled("email")) == 3  # only the replayed group


async def test_a_publisher_with_a_stale_group_cache_is_repaired_by_the_singleton() -> None:
    app = Recorder(groups=("billing", "audit"))
    async with TestCluster(runners=2, configure=app.configure) as tc:
        publisher = tc.client_member._runner.publisher  # type: ignore[union-attr]
        assert publisher is not None
        # as if it had read the groups just before "audit" was registered
        publisher._groups["orders"] = (float("inf"), ("billing",))
        await tc.client_member.publish(OrderPlaced(order_id="x"))
        await until(lambda: len(app.handled("audit")) == 1)
        await until(lambda: len(app.handled("billing")) == 1)
        assert app.handled("audit") == app.handled("billing") == [("x", 0)]


@pytest.mark.timeout(60)
async def test_a_killed_runners_keys_move_on_in_order_each_event_handled_once() -> None:
    app = Recorder(groups=("billing", "email"), slow=0.002)
    async with TestCluster(runners=3, configure=app.configure) as tc:
        keys = [f"k{i}" for i in range(12)]
        for seq in range(10):
            await tc.client_member.publish_many(
                [OrderPlaced(order_id=k, seq=seq) for k in keys])
            if seq == 4:
                await tc.kill(0)
        await until(lambda: all(len(app.handled(g)) == 120 for g in app.groups), timeout=30)
        for group in app.groups:
            for key in keys:
                assert app.of_key(group, key) == list(range(10)), (group, key)
