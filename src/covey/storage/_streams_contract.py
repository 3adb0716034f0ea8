"""The :class:`StreamStore` contract: stream items, routes (who listens where) and mailboxes.

Three small stores behind ``storage.streams``, used by ``covey.realtime``:

- **stream items.** A stream is a name (already scoped by tenant by the caller:
  the *key*); each item gets the next **position** of its stream, and positions
  follow **commit order** within a stream (a reader that keeps
  ``position > last`` never skips an item that committed late): PostgreSQL takes
  the stream's head row lock (``INSERT .. ON CONFLICT DO UPDATE .. RETURNING``)
  inside the appending transaction, so a second appender of the same stream
  waits for the first to commit; SQLite and memory serialize their writers. A
  stream's head also holds its **epoch**: a random positive integer (below 2**53)
  chosen when the head is created. Positions restart at 1 only with a new epoch
  (the head was dropped by :meth:`StreamStore.trim` after the stream was idle
  past the retention), so ``(epoch, position)`` identifies an item for ever.
- **routes.** ``(kind, key, conn) -> runner`` rows with an expiry: which runner
  holds a subscriber of a stream (``kind="stream"``, ``conn`` = the runner) and
  which connections a user has (``kind="user"``, ``conn`` = the connection id).
  A runner renews all of its rows at once; a dead runner's rows expire.
- **mailboxes.** Messages kept for a user who was offline, with an expiry,
  read in the order they were stored and deleted once delivered.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: a stream key, a route key or a mailbox key: at most this many UTF-8 bytes
MAX_STREAM_KEY_BYTES = 300


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """An item to append.

    Attributes:
        stream: the stream key (1..MAX_STREAM_KEY_BYTES bytes, no NUL).
        id: its snowflake: appending an id the stream holds already stores
            nothing and returns the stored item (a retried publish).
        payload: the encoded item.
        headers: the publisher's request context (at most 64 entries).
        published_at: Unix seconds, the publisher's clock.
    """

    stream: str
    id: int
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    published_at: float = 0.0


@dataclass(frozen=True, slots=True)
class StreamItem:
    """A stored item: its entry plus the stream's epoch and the item's position."""

    stream: str
    epoch: int
    position: int
    id: int
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    published_at: float = 0.0


@dataclass(frozen=True, slots=True)
class StreamHead:
    """A stream's head.

    Attributes:
        stream: the key.
        epoch: see the module docstring.
        last: the highest position given (>= 1).
        first: the lowest position still stored (``last + 1`` when every item
            was trimmed): a reader at ``after < first - 1`` lost items.
        updated_at: when the last item was appended (Unix seconds).
    """

    stream: str
    epoch: int
    last: int
    first: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class Route:
    """Who listens where: ``kind`` ("stream" or "user"), ``key`` (the stream key or
    the user id), ``conn`` (a runner address or a connection id), ``runner`` (the
    address of the runner that holds it), ``tenant`` ("" for none), ``expires_at``
    (Unix seconds)."""

    kind: str
    key: str
    conn: str
    runner: str
    expires_at: float
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class Mail:
    """A message kept for an offline user: ``key`` (the user id, tenant-scoped by
    the caller), ``id`` (unique per key: storing it again keeps the first),
    ``payload``, ``headers``, ``stored_at`` and ``expires_at`` (Unix seconds)."""

    key: str
    id: str
    payload: bytes
    stored_at: float
    expires_at: float
    headers: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class StreamStore(Protocol):
    """Stream items, routes and mailboxes (``storage.streams``)."""

    # ---- stream items --------------------------------------------------

    async def append(self, entries: Sequence[StreamEntry], *, now: float,
                     sync: bool = True) -> list[StreamItem]:
        """Store ``entries`` in one transaction; one item per entry, in order.

        ``sync=False`` (PostgreSQL): commit without waiting for the WAL flush
        (``synchronous_commit = off`` for this transaction): visible at once and
        kept through any crash of covey's processes; a crash of the database
        server itself may lose the last moments of such appends. SQLite and
        memory ignore it.

        Entries of one stream get consecutive positions in argument order (an
        entry whose id the stream holds already, or that repeats an earlier
        entry's id, gets no new position: the stored item is returned). Heads are
        created (new epoch) or moved, ``updated_at = now``; PostgreSQL locks
        heads in key order (no deadlock between appenders of several streams).

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"]`` names it) for a
                malformed entry; nothing is stored then.
        """
        ...

    async def read(self, stream: str, after: int, *,
                   limit: int = 1000) -> tuple[StreamHead | None, list[StreamItem]]:
        """The stream's head (``None``: no such stream) and its stored items with
        ``position > after``, in position order, at most ``limit``."""
        ...

    async def heads(self, streams: Collection[str]) -> dict[str, StreamHead]:
        """The heads of those of ``streams`` that exist (one query)."""
        ...

    async def trim(self, *, keep: int, before: float, limit: int = 10_000) -> int:
        """Retention: delete items beyond the last ``keep`` of their stream and items
        published before ``before`` (the newest item of a stream is kept while its
        head stays); delete heads whose ``updated_at < before`` together with their
        items (their next append starts a new epoch). At most ``limit`` rows per
        call; returns how many rows were deleted (call again until less)."""
        ...

    async def stream_stats(self) -> tuple[int, int]:
        """(streams, items) stored: what ``covey status`` shows."""
        ...

    # ---- routes --------------------------------------------------------

    async def put_routes(self, routes: Sequence[Route]) -> None:
        """Insert or replace routes (by ``(kind, key, conn)``)."""
        ...

    async def renew_routes(self, runner: str, expires_at: float) -> int:
        """Move the expiry of every route of ``runner``; returns how many."""
        ...

    async def delete_routes(self, kind: str, pairs: Sequence[tuple[str, str]]) -> int:
        """Delete the routes ``(kind, key, conn)`` for each ``(key, conn)`` in ``pairs``."""
        ...

    async def delete_runner_routes(self, runner: str) -> int:
        """Delete every route of ``runner`` (it is leaving)."""
        ...

    async def routes(self, kind: str, keys: Collection[str], *,
                     now: float) -> list[Route]:
        """The unexpired routes of ``kind`` for ``keys``, by key then conn."""
        ...

    async def route_counts(self, *, now: float) -> dict[tuple[str, str], int]:
        """Unexpired routes counted by ``(runner, kind)``."""
        ...

    async def purge_routes(self, *, now: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired routes; returns how many."""
        ...

    # ---- mailboxes -----------------------------------------------------

    async def put_mail(self, mails: Sequence[Mail]) -> list[bool]:
        """Store ``mails``; one flag per mail: ``True`` if stored, ``False`` if its
        ``(key, id)`` is stored already (kept as it was)."""
        ...

    async def mail(self, key: str, *, now: float, limit: int = 1000) -> list[Mail]:
        """The unexpired mails of ``key``, in the order they were stored."""
        ...

    async def delete_mail(self, key: str, ids: Collection[str]) -> int:
        """Delete those mails of ``key`` (delivered); returns how many."""
        ...

    async def purge_mail(self, *, now: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired mails; returns how many."""
        ...


@runtime_checkable
class TransactionalStreams(Protocol):
    """Optional: append inside the application's own transaction (the outbox):
    the items exist only if it commits (PostgreSQL, SQLite)."""

    async def append_in(self, connection: Any, entries: Sequence[StreamEntry], *,
                        now: float) -> list[StreamItem]:
        """:meth:`StreamStore.append` through ``connection`` (the application's,
        inside its open transaction)."""
        ...
