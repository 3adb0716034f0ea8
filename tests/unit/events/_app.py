"""Event classes and a recording application shared by the event tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import covey
from covey.jobs import Retry, exponential


class OrderPlaced(covey.Event, topic="orders", version=1, key="order_id"):
    order_id: str
    seq: int = 0
    fail: int = 0  # how many attempts fail before one succeeds


class OrderShipped(covey.Event, topic="orders", key="order_id"):
    order_id: str


FAST = Retry(max_attempts=3, backoff=exponential(0.01, 0.02), jitter=False)


class Recorder:
    """Subscribes groups on every member and records what committed.

    Effects are appended at commit (``ctx.transaction().on_commit``): what a
    test counts is what the group's exactly-once effects would be.
    """

    def __init__(self, groups: tuple[str, ...] = ("billing", "email"), *,
                 start: str = "latest", retry: Retry | None = FAST,
                 slow: float = 0.0) -> None:
        self.groups = groups
        self.start = start
        self.retry = retry
        self.slow = slow
        self.effects: dict[str, list[tuple[str, int]]] = {g: [] for g in groups}
        self.attempts: dict[tuple[str, str, int], int] = {}
        self.contexts: list[covey.EventContext] = []
        self.members: list[covey.Cluster] = []
        self.extra: Callable[[covey.Cluster], None] | None = None

    def configure(self, cluster: covey.Cluster) -> None:
        self.members.append(cluster)
        for group in self.groups:
            self._subscribe(cluster, group)
        if self.extra is not None:
            self.extra(cluster)

    def _subscribe(self, cluster: covey.Cluster, group: str) -> None:
        @cluster.subscribe(OrderPlaced, group=group, start=self.start, retry=self.retry)
        async def handle(event: OrderPlaced, ctx: covey.EventContext) -> None:
            self.contexts.append(ctx)
            seen = self.attempts.get((group, event.order_id, event.seq), 0) + 1
            self.attempts[(group, event.order_id, event.seq)] = seen
            if self.slow:
                await asyncio.sleep(self.slow)
            if seen <= event.fail:
                raise ConnectionError(f"attempt {seen} of {event.order_id}/{event.seq} fails")
            tx = await ctx.transaction()
            tx.on_commit(lambda: self.effects[group].append((event.order_id, event.seq)))

    def handled(self, group: str) -> list[tuple[str, int]]:
        return self.effects[group]

    def of_key(self, group: str, key: str) -> list[int]:
        return [seq for k, seq in self.effects[group] if k == key]


def runner_types() -> tuple[Any, ...]:
    return ()
