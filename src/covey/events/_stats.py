"""How far behind each subscriber group is (``covey events lag``, the lag gauges).

A group's lag is its deliveries not completed yet plus the events after its
cursor that have no delivery yet (the events singleton has not walked them).
Both are counted in the store (``storage.events.delivery_stats`` and
``unfanned``); the events not fanned out are counted up to :data:`SCAN_LIMIT`
per topic (a floor beyond it).
"""

from __future__ import annotations

from dataclasses import dataclass

from covey.core import Clock
from covey.storage import MessageRecord, Storage

#: the most events after a cursor one lag sample counts
SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class GroupStats:
    """One group's lag.

    Attributes:
        group: its name.
        topics: the topics it reads.
        pending: deliveries stored and not completed.
        unfanned: events after its cursors with no delivery yet.
        lag: ``pending + unfanned`` (events).
        lag_seconds: age of its oldest pending delivery (0 when none).
        dead_letters: deliveries in its dead-letter.
    """

    group: str
    topics: tuple[str, ...]
    pending: int
    unfanned: int
    lag_seconds: float
    dead_letters: int

    @property
    def lag(self) -> int:
        return self.pending + self.unfanned


def group_of(record: MessageRecord) -> str:
    """The group a ``covey.Event`` delivery belongs to."""
    return record.message.address.entity_id.split("/", 1)[0]


async def group_stats(storage: Storage, clock: Clock,
                      group: str | None = None) -> dict[str, GroupStats]:
    """The lag of every registered group (or of ``group``), by name."""
    events = storage.events
    rows = await events.groups(group=group)
    counted = {s.group: s for s in await events.delivery_stats()}
    now = clock.now()
    result: dict[str, GroupStats] = {}
    for name in sorted({r.group for r in rows}):
        unfanned = 0
        for row in rows:
            if row.group == name:
                lacking, _ = await events.unfanned(name, row.topic, row.cursor,
                                                   limit=SCAN_LIMIT)
                unfanned += len(lacking)
        stats = counted.get(name)
        oldest = now if stats is None or stats.oldest_pending_at is None else (
            stats.oldest_pending_at)
        result[name] = GroupStats(
            name, tuple(r.topic for r in rows if r.group == name),
            0 if stats is None else stats.pending, unfanned, max(now - oldest, 0.0),
            0 if stats is None else stats.dead)
    return result
