"""Operators' reads on PostgreSQL: bounded, each one statement on the read pool.

The plans (see :mod:`covey.storage._inspection_contract` for the why): a tag's
page is a backward range scan of ``messages_pending`` or ``messages_dead``
(``(entity_type, tag, id)``, partial); the tags come from a loose index scan of
the same index (a recursive CTE: one probe per tag); a page across tags merges
every tag's newest ``limit`` ids (``LATERAL``) and then reads those rows only.
``tests/integration/test_inspection_plans.py`` checks the plans on a large store.
"""

from __future__ import annotations

from typing import Any

from covey.storage._inspection_checked import CheckedInspectionStore, Which
from covey.storage._inspection_contract import MAX_TAGS, ShardRow, TagCount
from covey.storage._message import MessageRecord
from covey.storage._rows import RECORD_COLUMNS, record_of
from covey.storage.postgres._errors import translated

#: the rows of each partial index, as its predicate (the planner matches it)
_STATES: dict[Which, str] = {
    "pending": "NOT m.processed",
    "dead": "m.processed AND m.reply_is_error",
}


def _tags(name: str, which: Which) -> str:
    """A recursive CTE ``name(tag, n)``: the first :data:`MAX_TAGS` tags of entity
    type $1 among ``which`` rows, in order, found by jumping from each tag to the
    next in the index (the last row's tag is NULL)."""
    where = f"{_STATES[which]} AND m.entity_type = $1"
    return (
        f"{name}(tag, n) AS ((SELECT m.tag, 1 FROM {{s}}.messages m WHERE {where}"
        " ORDER BY m.tag LIMIT 1)"
        f" UNION ALL SELECT (SELECT m.tag FROM {{s}}.messages m WHERE {where}"
        f" AND m.tag > t.tag ORDER BY m.tag LIMIT 1), t.n + 1 FROM {name} t"
        f" WHERE t.tag IS NOT NULL AND t.n < {MAX_TAGS})"
    )


def _page_of_tag(which: Which) -> str:
    """One tag's page: $1 type, $2 tag, $3 before id, $4 limit."""
    return (
        f"SELECT {RECORD_COLUMNS} FROM {{s}}.messages m WHERE {_STATES[which]}"
        " AND m.entity_type = $1 AND m.tag = $2 AND m.id < $3 ORDER BY m.id DESC LIMIT $4"
    )


def _page_across_tags(which: Which) -> str:
    """A page across tags: $1 type, $2 before id, $3 limit."""
    return (
        f"WITH RECURSIVE {_tags('tags', which)},"
        " ids AS (SELECT p.id FROM tags t CROSS JOIN LATERAL (SELECT m.id"
        f" FROM {{s}}.messages m WHERE {_STATES[which]} AND m.entity_type = $1"
        " AND m.tag = t.tag AND m.id < $2 ORDER BY m.id DESC LIMIT $3) p"
        " ORDER BY p.id DESC LIMIT $3)"
        f" SELECT {RECORD_COLUMNS} FROM {{s}}.messages WHERE id IN (SELECT id FROM ids)"
        " ORDER BY id DESC"
    )


class InspectionStatements:
    """The inspection statements of one schema (``{s}``: the quoted schema)."""

    SHARDS = (
        "SELECT shard_group, shard, epoch, owner, acquired_at FROM {s}.shards"
        " ORDER BY shard_group, shard"
    )
    #: per tag ($1 type): queued and running among its oldest $3 unprocessed rows
    #: (leases live after $2), and its dead rows up to $3
    TAG_COUNTS = (
        f"WITH RECURSIVE {_tags('pending', 'pending')}, {_tags('dead', 'dead')},"
        " tags AS (SELECT tag FROM pending WHERE tag IS NOT NULL"
        f" UNION SELECT tag FROM dead WHERE tag IS NOT NULL ORDER BY 1 LIMIT {MAX_TAGS})"
        " SELECT t.tag, p.queued, p.running, d.dead FROM tags t"
        " CROSS JOIN LATERAL (SELECT"
        " count(*) FILTER (WHERE NOT q.running) AS queued,"
        " count(*) FILTER (WHERE q.running) AS running"
        " FROM (SELECT coalesce(m.lease_until > $2, false) OR m.starts > m.failures AS running"
        f" FROM {{s}}.messages m WHERE {_STATES['pending']}"
        " AND m.entity_type = $1 AND m.tag = t.tag ORDER BY m.id LIMIT $3) q) p"
        " CROSS JOIN LATERAL (SELECT count(*) AS dead FROM (SELECT 1 FROM {s}.messages m"
        f" WHERE {_STATES['dead']} AND m.entity_type = $1 AND m.tag = t.tag LIMIT $3) x) d"
        " ORDER BY t.tag"
    )
    PENDING_OF_TAG = _page_of_tag("pending")
    DEAD_OF_TAG = _page_of_tag("dead")
    PENDING = _page_across_tags("pending")
    DEAD = _page_across_tags("dead")

    def __init__(self, schema: str) -> None:
        for name, template in vars(InspectionStatements).items():
            if name.isupper():
                setattr(self, name, template.format(s=schema))


class PostgresInspectionStore(CheckedInspectionStore):
    """:class:`covey.storage.InspectionStore` on PostgreSQL.

    Args:
        pool: the storage's read pool (custom plans: each read is planned with
            its own arguments, so a tag with few rows and one with many get
            their own plans).
        schema: the quoted schema name.
    """

    def __init__(self, pool: Any, schema: str) -> None:
        self._pool = pool
        self._sql = InspectionStatements(schema)

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        """Run one read with JIT compilation off.

        A read over many tags is estimated expensive enough for PostgreSQL's JIT
        (``jit_above_cost``), whose compilation then costs more than the query
        (30 to 150 ms measured on a 1,000,000-row store, for a 120 ms read): the
        setting is changed for this transaction only (``SET LOCAL``), so the
        pooled connection is left as it was.
        """
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute("SET LOCAL jit = off")
            return list(await conn.fetch(query, *args))

    async def _shards(self) -> list[ShardRow]:
        with translated("reading shards"):
            rows = await self._pool.fetch(self._sql.SHARDS)
        return [ShardRow(r[0], int(r[1]), int(r[2]), r[3],
                         None if r[4] is None else float(r[4])) for r in rows]

    async def _tag_counts(self, entity_type: str, now: float, cap: int) -> list[TagCount]:
        with translated("counting messages by tag"):
            rows = await self._fetch(self._sql.TAG_COUNTS, entity_type, now, cap)
        return [TagCount(r[0], int(r[1]), int(r[2]), int(r[3]),
                         int(r[1]) + int(r[2]) >= cap or int(r[3]) >= cap) for r in rows]

    async def _page(self, which: Which, entity_type: str, tag: str | None, limit: int,
                    before_id: int) -> list[MessageRecord]:
        with translated(f"listing {which} messages"):
            if tag is None:
                query = self._sql.PENDING if which == "pending" else self._sql.DEAD
                rows = await self._fetch(query, entity_type, before_id, limit)
            else:
                query = self._sql.PENDING_OF_TAG if which == "pending" else self._sql.DEAD_OF_TAG
                rows = await self._fetch(query, entity_type, tag, before_id, limit)
        return [record_of(r) for r in rows]
