"""The bounds of one WebSocket connection: its options, its rate limit and its send queue.

Memory per connection is bounded by them: a frame read is at most
``max_frame`` bytes (the ASGI server reads the next one only when the app asks),
calls in flight at most ``max_in_flight``, the send queue at most
``queue_frames`` frames and ``queue_bytes`` bytes. What the connection answers
itself (results, errors, pongs) waits for room in the queue, which stops the
reading, which stops the client (TCP backpressure); what other tasks push
(:meth:`Connection.deliver`) does not wait: a full queue closes the socket with
1013 and the client reconnects.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass

from covey.core.runtime import check_seconds, invalid_argument
from covey.realtime._codec import Wire

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WebSocketOptions:
    """How a WebSocket contract is served (see :func:`~covey.realtime.websocket_app`).

    Attributes:
        max_frame: the largest frame accepted or sent, in bytes; a larger one
            gets a ``frame_too_large`` error frame. Give uvicorn a
            ``ws_max_size`` at least this large (it closes with 1009 above its own).
        rate: frames per second a connection may send (bursts of twice that);
            more get ``rate_limited`` error frames, persistent abuse closes it
            with 1008. ``None``: no limit.
        max_in_flight: calls one connection may have running; more get
            ``rate_limited``.
        auth_timeout: seconds for the first-message ticket to arrive, and for
            the authentication hook to answer.
        ping_interval: seconds without a frame sent after which the server
            sends ``{"t":"ping"}`` (keeps proxies from closing an idle socket,
            lets browsers notice a dead server).
        send_timeout: seconds one frame may take to write; a client that does
            not read for that long is released.
        queue_frames: frames the send queue holds.
        queue_bytes: bytes the send queue holds.
    """

    max_frame: int = MiB
    rate: float | None = 100.0
    max_in_flight: int = 64
    auth_timeout: float = 10.0
    ping_interval: float = 20.0
    send_timeout: float = 5.0
    queue_frames: int = 1000
    queue_bytes: int = MiB

    def __post_init__(self) -> None:
        for name in ("max_frame", "max_in_flight", "queue_frames", "queue_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid_argument(name, f"{value!r} is not a positive integer")
        rate = self.rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                                 or not 0 < rate < math.inf):
            raise invalid_argument("rate", f"{rate!r} is not a positive number of frames "
                                           "per second")
        for name in ("auth_timeout", "ping_interval", "send_timeout"):
            check_seconds(name, getattr(self, name), positive=True)


class RateLimit:
    """A token bucket: ``rate`` frames per second, bursts of ``2 * rate``.

    Refused frames are strikes; they fade at a tenth of the rate, and once
    more than a burst of them stands the connection is abusive (closed with
    1008): a client that keeps sending above its rate, not one that bursts.
    """

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = 2 * rate
        self.tokens = self.capacity
        self.strikes = 0.0
        self._at = now

    def take(self, now: float) -> bool:
        """Whether a frame arriving at ``now`` (monotonic seconds) is within the rate."""
        elapsed = max(0.0, now - self._at)
        self._at = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.strikes = max(0.0, self.strikes - elapsed * self.rate / 10)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.strikes += 1
        return False

    @property
    def abusive(self) -> bool:
        """More refused frames stand than a burst: close the connection."""
        return self.strikes > self.capacity


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message in the send queue (``push``: counted as an item sent)."""

    data: Wire
    push: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """The end of the send queue: send a close frame with ``code`` and ``reason``."""

    code: int
    reason: str


class Outbox:
    """The bounded send queue of one connection, drained by its writer.

    Args:
        max_frames: messages it holds.
        max_bytes: bytes it holds (one message of any size fits in an empty queue).
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self._items: deque[Outgoing] = deque()
        self._bytes = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._close: Close | None = None
        self._flush = False
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """Bytes queued."""
        return self._bytes

    @property
    def closed(self) -> bool:
        """No more messages are taken."""
        return self._close is not None

    def _fits(self) -> bool:
        return not self._items or (len(self._items) < self._max_frames
                                   and self._bytes < self._max_bytes)

    def offer(self, data: Wire, *, push: bool = False) -> bool:
        """Queue ``data`` if there is room; ``False`` when full or closed."""
        if self._close is not None or not self._fits():
            return False
        self._add(Outgoing(data, push))
        return True

    async def put(self, data: Wire) -> bool:
        """Queue ``data`` once there is room; ``False`` if the queue closed meanwhile."""
        while self._close is None and not self._fits():
            self._room.clear()
            await self._room.wait()
        if self._close is not None:
            return False
        self._add(Outgoing(data))
        return True

    def _add(self, item: Outgoing) -> None:
        self._items.append(item)
        self._bytes += len(item.data)
        self._ready.set()

    async def get(self) -> Outgoing | Close | None:
        """The next message, then the :class:`Close` (``None``: the peer is gone)."""
        while True:
            if self._items and (self._close is None or self._flush):
                item = self._items.popleft()
                self._bytes -= len(item.data)
                if self._fits():
                    self._room.set()
                return item
            if self._close is not None:
                return None if self._close.code == 0 else self._close
            self._ready.clear()
            await self._ready.wait()

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """Take no more; send what is queued first if ``flush``, then close with
        ``code`` (0: the peer is gone, send nothing). The first close wins, except
        that an immediate one overrides a flushing one."""
        if self._close is not None and not (self._flush and not flush):
            return
        self._close = Close(code, reason)
        self._flush = flush
        if not flush:
            self._items.clear()
            self._bytes = 0
        self._ready.set()
        self._room.set()  # waiting puts give up
