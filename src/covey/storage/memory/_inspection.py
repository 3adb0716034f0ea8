"""Operators' reads of the in-memory backend: plain scans of its dictionaries.

The in-memory store serves tests and single-process runs, so reading every row
is fine here; the answers (order, caps, paging) are the SQL backends'.
"""

from __future__ import annotations

from covey.storage._inspection_checked import CheckedInspectionStore, Which
from covey.storage._inspection_contract import MAX_TAGS, ShardRow, TagCount
from covey.storage._message import MessageRecord
from covey.storage.memory._messages import InMemoryMessageStorage
from covey.storage.memory._runners import InMemoryRunnerStorage


class InMemoryInspectionStore(CheckedInspectionStore):
    """:class:`covey.storage.InspectionStore` over the in-memory stores."""

    def __init__(self, runners: InMemoryRunnerStorage, messages: InMemoryMessageStorage) -> None:
        self._runners = runners
        self._messages = messages

    async def _shards(self) -> list[ShardRow]:
        rows = [ShardRow(shard.group, shard.id, lease.epoch, str(lease.owner), lease.acquired_at)
                for shard, lease in self._runners.leases.items() if lease.owner is not None]
        return sorted(rows, key=lambda r: (r.group, r.shard))

    async def _tag_counts(self, entity_type: str, now: float, cap: int) -> list[TagCount]:
        counts: dict[str, list[int]] = {}  # tag -> [queued, running, dead]
        for message_id in sorted(self._messages.rows):  # oldest first, as the SQL backends
            row = self._messages.rows[message_id]
            if row.message.address.entity_type != entity_type:
                continue
            state = row.state()
            if state == "processed":
                continue
            tally = counts.setdefault(row.message.tag, [0, 0, 0])
            if state == "error":
                tally[2] = min(cap, tally[2] + 1)
            elif tally[0] + tally[1] < cap:
                running = ((row.lease_until is not None and row.lease_until > now)
                           or row.message.starts > row.message.failures)
                tally[1 if running else 0] += 1
        return [TagCount(tag, q, r, d, q + r >= cap or d >= cap)
                for tag, (q, r, d) in sorted(counts.items())[:MAX_TAGS]]

    async def _page(self, which: Which, entity_type: str, tag: str | None, limit: int,
                    before_id: int) -> list[MessageRecord]:
        want = "error" if which == "dead" else "unprocessed"
        found = [row for row in self._messages.rows.values()
                 if row.message.id < before_id and row.state() == want
                 and row.message.address.entity_type == entity_type
                 and (tag is None or row.message.tag == tag)]
        found.sort(key=lambda row: row.message.id, reverse=True)
        return [row.record() for row in found[:limit]]
