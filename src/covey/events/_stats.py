"""How far behind each subscriber group is (``covey events lag``, the lag gauges).

A group's lag is its deliveries not completed yet plus the events after its
cursor that have no delivery yet (the events singleton has not walked them).
The storage contracts have no count by entity-id prefix yet, so the pending
deliveries are counted from a listing of the unprocessed ``covey.Event``
messages, at most :data:`SCAN_LIMIT` of them (the figure is a floor beyond it).
"""

from __future__ import annotations

from dataclasses import dataclass

from covey.core import Clock
from covey.storage import EVENT_ENTITY_TYPE, MessageRecord, Storage

#: the most messages one lag sample reads
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
    pending = await storage.messages.list_messages(EVENT_ENTITY_TYPE, state="unprocessed",
                                                   limit=SCAN_LIMIT)
    dead = await storage.messages.list_messages(EVENT_ENTITY_TYPE, state="error",
                                                limit=SCAN_LIMIT)
    now = clock.now()
    result: dict[str, GroupStats] = {}
    for name in sorted({r.group for r in rows}):
        mine = [r for r in pending if group_of(r) == name]
        unfanned = 0
        for row in rows:
            if row.group == name:
                after = await events.read(row.cursor, topics=[row.topic], limit=SCAN_LIMIT)
                # those stored with this group's delivery are counted as pending
                unfanned += sum(1 for e in after if name not in e.groups)
        oldest = min((r.created_at for r in mine), default=now)
        result[name] = GroupStats(
            name, tuple(r.topic for r in rows if r.group == name), len(mine), unfanned,
            max(now - oldest, 0.0), sum(1 for r in dead if group_of(r) == name))
    return result
