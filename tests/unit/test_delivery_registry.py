"""DeliveryRegistry: per-type deliverers over a default; duplicates refused."""

from __future__ import annotations

import pytest

from covey.core import ClusterError, Reason, ShardId
from covey.sharding.runtime import DeliveryRegistry, Envelope, Reschedule
from covey.storage import Reply, UnitOfWork


class Recorder:
    def __init__(self, name: str, stopped: list[str]) -> None:
        self.name = name
        self.stopped = stopped

    async def deliver(self, envelope: Envelope,
                      unit: UnitOfWork | None = None) -> Reply | Reschedule:
        raise AssertionError("not called here")

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        self.stopped.append(self.name)


async def test_registered_type_wins_over_the_default_and_stop_reaches_each_once() -> None:
    stopped: list[str] = []
    entities, jobs = Recorder("entities", stopped), Recorder("jobs", stopped)
    registry = DeliveryRegistry()
    assert registry.for_type("Account") is None
    registry.set_default(entities)
    registry.register("covey.job", jobs)
    registry.register("covey.cron", entities)  # the same deliverer under two names
    assert registry.for_type("covey.job") is jobs
    assert registry.for_type("Account") is entities
    await registry.stop_shards({ShardId("default", 1)}, graceful=True)
    assert stopped == ["jobs", "entities"]


def test_registering_a_type_twice_is_refused() -> None:
    registry = DeliveryRegistry()
    registry.register("covey.job", Recorder("a", []))
    with pytest.raises(ClusterError) as caught:
        registry.register("covey.job", Recorder("b", []))
    assert caught.value.reason is Reason.INVALID_ARGUMENT
