"""Operators' reads on SQLite: bounded, on the two partial indexes of migration 0007.

The same plans as PostgreSQL's (see :mod:`covey.storage._inspection_contract`):
``covey_messages_pending`` and ``covey_messages_dead`` hold ``(entity_type, tag,
id)`` of the unprocessed rows and of the error replies. The tags in use come
from a loose index scan (a recursive query, one probe per tag); the per-tag
counts and the merge of a page across tags run tag by tag in Python, in the
same read (SQLite is in-process: a statement per tag costs no round trip). Each
statement reads its own snapshot: an operator's view may mix two moments.
"""

from __future__ import annotations

import heapq
import sqlite3

from covey.storage._inspection_checked import CheckedInspectionStore, Which
from covey.storage._inspection_contract import MAX_TAGS, ShardRow, TagCount
from covey.storage._message import MessageRecord
from covey.storage._rows import RECORD_COLUMNS, record_of
from covey.storage.sqlite._connection import SqliteDatabase
from covey.storage.sqlite._queries import placeholders

#: the rows of each partial index, as its predicate (the planner matches it)
_STATES: dict[Which, str] = {
    "pending": "processed = 0",
    "dead": "processed = 1 AND reply_is_error = 1",
}
SHARDS = (
    "SELECT shard_group, shard, epoch, owner, acquired_at FROM covey_shards"
    " WHERE owner IS NOT NULL ORDER BY shard_group, shard"
)


def _tags(which: Which) -> str:
    """The first :data:`MAX_TAGS` tags of entity type ?1 among ``which`` rows, in order."""
    first = (f"SELECT tag FROM covey_messages WHERE {_STATES[which]} AND entity_type = ?1"
             " {after} ORDER BY tag LIMIT 1")
    return (
        f"WITH RECURSIVE tags(tag, n) AS (SELECT ({first.format(after='')}), 1"
        f" UNION ALL SELECT ({first.format(after='AND tag > tags.tag')}), n + 1 FROM tags"
        f" WHERE tags.tag IS NOT NULL AND n < {MAX_TAGS})"
        " SELECT tag FROM tags WHERE tag IS NOT NULL"
    )


_TAGS: dict[Which, str] = {"pending": _tags("pending"), "dead": _tags("dead")}
#: queued and running among the tag's oldest ? unprocessed rows (leases live after ?)
_PENDING_COUNTS = (
    "SELECT coalesce(sum(NOT running), 0), coalesce(sum(running), 0) FROM (SELECT"
    " (coalesce(lease_until > ?1, 0) OR starts > failures) AS running FROM covey_messages"
    f" WHERE {_STATES['pending']} AND entity_type = ?2 AND tag = ?3 ORDER BY id LIMIT ?4)"
)
_DEAD_COUNT = (
    "SELECT count(*) FROM (SELECT 1 FROM covey_messages"
    f" WHERE {_STATES['dead']} AND entity_type = ?2 AND tag = ?3 LIMIT ?4)"
)
#: one tag's page (?1 type, ?2 tag, ?3 before id, ?4 limit): ids, or whole records
_IDS: dict[Which, str] = {
    which: (f"SELECT id FROM covey_messages WHERE {state} AND entity_type = ?1 AND tag = ?2"
            " AND id < ?3 ORDER BY id DESC LIMIT ?4")
    for which, state in _STATES.items()
}
_RECORDS: dict[Which, str] = {
    which: (f"SELECT {RECORD_COLUMNS} FROM covey_messages WHERE {state} AND entity_type = ?1"
            " AND tag = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4")
    for which, state in _STATES.items()
}
_BY_IDS = f"SELECT {RECORD_COLUMNS} FROM covey_messages WHERE id IN ({{ids}}) ORDER BY id DESC"


def _tags_of(conn: sqlite3.Connection, which: Which, entity_type: str) -> list[str]:
    return [row[0] for row in conn.execute(_TAGS[which], (entity_type,))]


class SqliteInspectionStore(CheckedInspectionStore):
    """:class:`covey.storage.InspectionStore` on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def _shards(self) -> list[ShardRow]:
        def run(conn: sqlite3.Connection) -> list[ShardRow]:
            return [ShardRow(str(g), int(n), int(epoch), str(owner),
                             None if at is None else float(at))
                    for g, n, epoch, owner, at in conn.execute(SHARDS)]

        return await self._db.read(run)

    async def _tag_counts(self, entity_type: str, now: float, cap: int) -> list[TagCount]:
        def run(conn: sqlite3.Connection) -> list[TagCount]:
            tags = sorted({*_tags_of(conn, "pending", entity_type),
                           *_tags_of(conn, "dead", entity_type)})[:MAX_TAGS]
            out = []
            for tag in tags:
                params = (now, entity_type, tag, cap)
                queued, running = conn.execute(_PENDING_COUNTS, params).fetchone()
                (dead,) = conn.execute(_DEAD_COUNT, params).fetchone()
                out.append(TagCount(tag, int(queued), int(running), int(dead),
                                    queued + running >= cap or dead >= cap))
            return out

        return await self._db.read(run)

    async def _page(self, which: Which, entity_type: str, tag: str | None, limit: int,
                    before_id: int) -> list[MessageRecord]:
        def run(conn: sqlite3.Connection) -> list[MessageRecord]:
            if tag is not None:
                rows = conn.execute(_RECORDS[which], (entity_type, tag, before_id, limit))
                return [record_of(row) for row in rows]
            # every tag's newest ids, merged: at most tags x limit index entries
            ids = heapq.nlargest(limit, (
                row[0] for each in _tags_of(conn, which, entity_type)
                for row in conn.execute(_IDS[which], (entity_type, each, before_id, limit))))
            if not ids:
                return []
            query = _BY_IDS.format(ids=placeholders(ids))
            return [record_of(row) for row in conn.execute(query, ids)]

        return await self._db.read(run)
