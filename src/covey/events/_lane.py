"""A key's lane: the deliveries of one ``covey.Event/<group>/<key>`` entity, in order.

The runner keeps one lane per active (group, key). A delivery pushed or read
for the key joins it and waits for its turn; the lane's worker runs them one
at a time, the oldest event first (event ids are snowflakes: publish order;
then the delivery's id, for a replayed event delivered twice). When a lane
opens it also reads the key's stored backlog, so an older delivery that was
not pushed (its owner died, a backfill) runs before the newer one that woke
the key. A drained lane stays open a moment for the key's next event (no
backlog read per event of a busy key).
"""

from __future__ import annotations

import asyncio
import collections
import heapq

from covey.core import EntityAddress
from covey.storage import Message, Reply

#: replies a lane remembers (a repeated push of a finished delivery)
_DONE_CACHE = 256
#: the header that carries the event's id (the publisher sets it)
EVENT_ID_HEADER = "covey-event-id"
#: the header naming the event its publisher published before with the same key
PREVIOUS_HEADER = "covey-event-previous"


def _order(message: Message) -> tuple[int, int]:
    """Publish order: the event's id, then the delivery's."""
    try:
        return int(message.headers.get(EVENT_ID_HEADER, "0")), message.id
    except ValueError:
        return 0, message.id


class Lane:
    """The known, unfinished deliveries of one key and who waits for them."""

    __slots__ = ("address", "arrived", "done", "done_events", "heap", "loaded", "order",
                 "pending", "pending_events", "stopping", "task", "truncated", "waiters")

    def __init__(self, address: EntityAddress) -> None:
        self.address = address
        self.pending: dict[int, Message] = {}
        self.order: dict[int, tuple[int, int]] = {}
        #: the pending deliveries by publish order (entries of finished ones are
        #: dropped when they reach the top)
        self.heap: list[tuple[tuple[int, int], int]] = []
        #: event id -> pending deliveries of it (a replay can add a second one)
        self.pending_events: collections.Counter[int] = collections.Counter()
        #: set when a delivery is offered (wakes a drained lane that lingers)
        self.arrived = asyncio.Event()
        self.waiters: dict[int, list[asyncio.Future[Reply]]] = {}
        self.done: collections.OrderedDict[int, Reply] = collections.OrderedDict()
        #: the events finished here (their ids), oldest first
        self.done_events: collections.OrderedDict[int, None] = collections.OrderedDict()
        #: deliveries a backlog read returned (the read saw everything older)
        self.loaded: set[int] = set()
        self.task: asyncio.Task[None] | None = None
        #: the last backlog read was cut at its limit: read again once drained
        self.truncated = False
        #: the shard is stopping: finish the delivery under way, start no other
        self.stopping = False

    def offer(self, message: Message) -> asyncio.Future[Reply]:
        """Add a delivery (once per id); the future gets its reply."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        reply = self.done.get(message.id)
        if reply is not None:
            future.set_result(reply)
            return future
        self.waiters.setdefault(message.id, []).append(future)
        self.merge(message)
        self.arrived.set()
        return future

    def merge(self, message: Message) -> None:
        """Know ``message`` as pending (the copy that counted more starts wins)."""
        known = self.pending.get(message.id)
        if message.id in self.done:
            return
        if known is None:
            self.pending[message.id] = message
            order = self.order[message.id] = _order(message)
            heapq.heappush(self.heap, (order, message.id))
            self.pending_events[order[0]] += 1
        elif (message.starts, message.failures) > (known.starts, known.failures):
            self.pending[message.id] = message

    def next(self) -> Message | None:
        """The pending delivery of the oldest event (``None``: nothing to run)."""
        if not self.pending or self.stopping:
            return None
        while self.heap[0][1] not in self.pending:
            heapq.heappop(self.heap)
        return self.pending[self.heap[0][1]]

    def unsure(self, message: Message) -> bool:
        """Whether an older event of the key may be stored but not known here: the
        delivery came after the last backlog read, and the event its publisher
        published before it is neither done here nor pending here."""
        if message.id in self.loaded:
            return False
        previous = message.headers.get(PREVIOUS_HEADER)
        if not previous:
            return False
        try:
            event_id = int(previous)
        except ValueError:
            return False
        return event_id not in self.done_events and event_id not in self.pending_events

    def finish(self, message_id: int, reply: Reply) -> None:
        """``message_id`` is completed with ``reply``: tell its waiters."""
        self.pending.pop(message_id, None)
        event_id = self.order.pop(message_id, (0, 0))[0]
        if event_id in self.pending_events:
            self.pending_events[event_id] -= 1
            if self.pending_events[event_id] <= 0:
                del self.pending_events[event_id]
        self.loaded.discard(message_id)
        self.done[message_id] = reply
        while len(self.done) > _DONE_CACHE:
            self.done.popitem(last=False)
        if event_id:
            self.done_events[event_id] = None
            while len(self.done_events) > _DONE_CACHE:
                self.done_events.popitem(last=False)
        for future in self.waiters.pop(message_id, ()):
            if not future.done():
                future.set_result(reply)

    def fail(self, error: BaseException) -> None:
        """The lane ends without running what is left: its waiters get ``error``."""
        for futures in self.waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: the waiter may be gone
        self.waiters.clear()
        self.pending.clear()
        self.order.clear()
        self.heap.clear()
        self.pending_events.clear()
        self.loaded.clear()
