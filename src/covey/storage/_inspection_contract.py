"""What the dashboard reads from storage beyond the stores' own operations.

``storage.inspection`` answers operators' questions about a possibly large store
(1,000,000 job rows and more) with bounded, indexed queries: every list is a
page (``limit`` at most :data:`MAX_PAGE`, keyset ``before_id``), every count
stops at a cap, and the tags in use are found without reading the rows of a tag.

Jobs (and every other kind of persisted message) are rows of the messages table:
``entity_type`` says which kind, ``tag`` names the job. A message is *queued*
while unprocessed and not running; *running* while unprocessed with a live lease
(``lease_until`` ahead) or with a run begun and not yet over (``starts >
failures``: a job pushed to its runner takes no lease); and *dead* once
processed with an error reply.

How the SQL backends stay bounded (PostgreSQL and SQLite alike): two partial
indexes on ``(entity_type, tag, id)``, one over unprocessed rows and one over
error replies. A tag's page is a backward range scan of one of them. The tags in
use come from a loose index scan (a recursive query that jumps from one tag to
the next: one index probe per tag, however many rows each tag has), at most
:data:`MAX_TAGS` of them. A page across tags merges each tag's newest ``limit``
ids (at most tags x ``limit`` index entries) and reads only the rows kept. A
count reads at most ``cap`` index entries (and their rows) per tag and state.
The other choice, grouping a capped sample of the type's rows, would cost no
index but spreads one cap across every tag: a busy tag would hide the others.
(A third index on ``(entity_type, tag, id)`` over every row bounds
``MessageStorage.list_messages`` of one type and tag, which the dashboard also
reads: workflows, cron ticks and webhook deliveries among a million jobs.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from covey.storage._message import MessageRecord

#: The most rows one page of :meth:`InspectionStore.dead_messages` or
#: :meth:`InspectionStore.pending_messages` returns.
MAX_PAGE = 1000
#: The most tags :meth:`InspectionStore.tag_counts` reports (and a page across
#: tags merges): the tags sort by name, those after the first 1000 are left out.
MAX_TAGS = 1000
#: The highest ``cap`` :meth:`InspectionStore.tag_counts` accepts.
MAX_CAP = 1_000_000


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One acquired shard: who holds it, since when, and its fencing epoch.

    ``owner`` is the runner address (``host:port``) that acquired it last; on
    PostgreSQL the row stays after a release (the advisory lock is the truth, and
    the next owner overwrites it), on SQLite and memory a released shard has no
    row here. ``acquired_at`` is when its current owner acquired it, in Unix
    seconds (``None`` for rows written before covey recorded it).
    """

    group: str
    shard: int
    epoch: int
    owner: str
    acquired_at: float | None


@dataclass(frozen=True, slots=True)
class TagCount:
    """Messages of one tag (a job's name) by state, each counted up to a cap.

    ``capped`` is true when any of the three counts reached the cap (then that
    count means "at least"). Queued and running are counted together from the
    tag's oldest unprocessed rows (running ones are usually the oldest): when
    they reach the cap, both mean "at least".
    """

    tag: str
    queued: int
    running: int
    dead: int
    capped: bool


class InspectionStore(Protocol):
    """Bounded reads for operators (the dashboard).

    Arguments are checked as every storage method's are: a malformed one is a
    :class:`~covey.core.ClusterError` with reason ``invalid_argument`` and
    ``details["field"]`` naming it, before anything is read.
    """

    async def shards(self) -> list[ShardRow]:
        """Every acquired shard, by group then shard number (one row per shard:
        at most the shard count times the groups)."""
        ...

    async def tag_counts(self, entity_type: str, *, now: float,
                         cap: int = 10_000) -> list[TagCount]:
        """Queued, running and dead messages of ``entity_type`` by tag (sorted by tag).

        ``now`` (Unix seconds) decides which leases are live. Each count reads at
        most ``cap`` rows (1..:data:`MAX_CAP`); tags with nothing queued, running
        or dead are left out; at most :data:`MAX_TAGS` tags.
        """
        ...

    async def dead_messages(self, entity_type: str, *, tag: str | None = None, limit: int = 50,
                            before_id: int | None = None) -> list[MessageRecord]:
        """Dead messages (error replies) of ``entity_type``, newest id first; a page.

        ``tag``: of that tag only. ``limit``: 0..:data:`MAX_PAGE` rows.
        ``before_id``: only ids lower than it (the next page starts below the
        last id of this one).
        """
        ...

    async def pending_messages(self, entity_type: str, *, tag: str | None = None,
                               limit: int = 50,
                               before_id: int | None = None) -> list[MessageRecord]:
        """Unprocessed messages (queued or running) of ``entity_type``, newest id first;
        a page, as :meth:`dead_messages`."""
        ...
