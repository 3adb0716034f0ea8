"""One subscriber of one stream on this pod: a bounded buffer and its own cursor.

Pushed items (the hub offers every item it receives for the stream) are
buffered; the iterator yields them in position order. Anything that does not
follow the subscriber's cursor (a gap: a push was lost or arrived out of order;
another epoch; the first read after subscribing) makes it re-read the store
from its cursor, so what it yields is every item after the cursor, each once,
whatever the pushes did. A buffer that overflows (the client does not keep up)
closes the subscriber: it raises ``slow_consumer`` and its client resumes from
:attr:`LocalSubscription.cursor`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

from covey.core import RealtimeError, Reason
from covey.realtime._types import Cursor, Reset, StreamMessage
from covey.storage import StreamHead, StreamItem

#: the header a publisher's SSE event name travels in
EVENT_HEADER = "covey-sse-event"
#: items read from the store per round trip
READ_BATCH = 500

Reader = Callable[[str, int, int], Awaitable[tuple[StreamHead | None, list[StreamItem]]]]


def message_of(name: str, item: StreamItem) -> StreamMessage:
    """What a subscriber yields for a stored item."""
    return StreamMessage(stream=name, cursor=Cursor(item.epoch, item.position),
                         data=item.payload, event=item.headers.get(EVENT_HEADER), id=item.id,
                         published_at=item.published_at)


class LocalSubscription:
    """A :class:`~covey.realtime.Subscription` fed by the pod's hub.

    Args:
        name: the stream's name (as the subscriber named it).
        key: its tenant-scoped store key.
        cursor: where to start (items after it are yielded).
        read: ``read(key, after, limit)`` of the stream store.
        max_items: buffered items before it overflows.
        max_bytes: buffered payload bytes before it overflows.
        on_close: told once when it closes (the hub forgets it).
    """

    def __init__(self, name: str, key: str, cursor: Cursor, read: Reader, *,
                 max_items: int, max_bytes: int,
                 on_close: Callable[[LocalSubscription], None]) -> None:
        self._name = name
        self.key = key
        self._cursor = cursor
        self._read = read
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._on_close = on_close
        self._queue: collections.deque[StreamItem] = collections.deque()
        self._bytes = 0
        self._ready: collections.deque[StreamMessage | Reset] = collections.deque()
        self._wake = asyncio.Event()
        self._must_read = True  # the first round reads what came after the cursor
        self._overflowed = False
        self._closed = False

    # ---- the Subscription protocol --------------------------------------

    @property
    def stream(self) -> str:
        return self._name

    @property
    def cursor(self) -> Cursor:
        return self._cursor

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> LocalSubscription:
        return self

    async def __anext__(self) -> StreamMessage | Reset:
        while True:
            if self._overflowed:
                self._close()
                raise RealtimeError(f"subscriber of {self._name!r} fell behind its buffer "
                                    f"({self._max_items} items, {self._max_bytes} bytes); resume "
                                    f"from {self._cursor}", reason=Reason.SLOW_CONSUMER,
                                    stream=self._name, cursor=str(self._cursor))
            if self._closed:
                raise StopAsyncIteration
            if self._ready:
                return self._ready.popleft()
            self._wake.clear()
            if self._must_read:
                self._must_read = False
                try:
                    await self._catch_up()
                except BaseException:
                    self._must_read = True  # cancelled or failed: read again next time
                    raise
                continue
            if self._queue:
                item = self._queue.popleft()
                self._bytes -= len(item.payload)
                self._take(item)
                continue
            await self._wake.wait()

    async def aclose(self) -> None:
        self._close()

    def take_ready(self, limit: int) -> list[StreamMessage | Reset]:
        """Up to ``limit`` more items that are here already (no store read, no
        wait): a writer sends a burst in one write. Stops at a gap (the next
        ``__anext__`` reads the store) and when it overflowed or closed."""
        out: list[StreamMessage | Reset] = []
        while len(out) < limit and not (self._overflowed or self._closed or self._must_read):
            if self._ready:
                out.append(self._ready.popleft())
            elif self._queue:
                item = self._queue.popleft()
                self._bytes -= len(item.payload)
                self._take(item)
            else:
                break
        return out

    # ---- fed by the hub -------------------------------------------------

    def offer(self, item: StreamItem) -> None:
        """A pushed item of this stream (any order, maybe one yielded already)."""
        if self._closed or self._overflowed:
            return
        if item.epoch == self._cursor.epoch and item.position <= self._cursor.position:
            return  # yielded already
        self._queue.append(item)
        self._bytes += len(item.payload)
        if len(self._queue) > self._max_items or self._bytes > self._max_bytes:
            self._overflow()
        self._wake.set()

    def poke(self) -> None:
        """Re-read the store from the cursor (the stream moved past what was pushed)."""
        self._must_read = True
        self._wake.set()

    def stop(self) -> None:
        """End the iteration (the pod drains)."""
        self._close()
        self._wake.set()

    # ---- internals ------------------------------------------------------

    def _take(self, item: StreamItem) -> None:
        """Yield ``item`` if it follows the cursor; otherwise read the store."""
        cursor = self._cursor
        follows = item.position == cursor.position + 1 and (
            item.epoch == cursor.epoch or cursor == Cursor(0, 0))
        if follows:
            self._cursor = Cursor(item.epoch, item.position)
            self._ready.append(message_of(self._name, item))
        elif not (item.epoch == cursor.epoch and item.position <= cursor.position):
            self._must_read = True  # a gap, or another epoch: the store knows

    async def _catch_up(self) -> None:
        """Read what follows the cursor from the store (a batch; again if more)."""
        cursor = self._cursor
        head, items = await self._read(self.key, cursor.position if cursor.epoch else 0,
                                       READ_BATCH)
        if head is None:
            if cursor.epoch != 0:  # the stream was dropped (idle past its retention)
                self._reset(Cursor(0, 0))
            return
        if cursor == Cursor(0, 0):
            # from the stream's start: every retained item
            self._cursor = Cursor(head.epoch, head.first - 1)
        elif cursor.epoch != head.epoch or cursor.position > head.last \
                or cursor.position < head.first - 1:
            self._reset(Cursor(head.epoch, head.last))  # restarted, or out of retention
            return
        for item in items:
            # the store is the authority: what it has after the cursor is next, in
            # order (positions have no gaps; were one ever missing, taking the
            # store's next item keeps this from re-reading for ever)
            if item.epoch == head.epoch and item.position > self._cursor.position:
                self._cursor = Cursor(item.epoch, item.position)
                self._ready.append(message_of(self._name, item))
        if len(items) == READ_BATCH:
            self._must_read = True

    def _reset(self, cursor: Cursor) -> None:
        self._cursor = cursor
        self._queue.clear()
        self._bytes = 0
        self._ready.append(Reset(self._name, cursor))

    def _overflow(self) -> None:
        self._overflowed = True
        self._queue.clear()
        self._bytes = 0

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._ready.clear()
            self._bytes = 0
            self._on_close(self)
