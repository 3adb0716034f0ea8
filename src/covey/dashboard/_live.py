"""Live updates: a view's fragment over covey's own SSE response.

``GET <root>/live/<view>?<the page's query>`` is served by
:class:`covey.realtime.EventStreamResponse` (bounded writes, heartbeats, the end
when the pod drains) over a :class:`LiveFeed`: a subscription that renders the
view's fragment at once, then every ``refresh`` seconds, and yields it (an SSE
event named after the view, which htmx-ext-sse swaps in) only when it changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from covey.core import Clock
from covey.realtime import Cursor, StreamMessage

Render = Callable[[], Awaitable[str]]


class LiveFeed:
    """A :class:`covey.realtime.Subscription` of one view's rendered fragment.

    Args:
        view: the view's name: the stream's name and every event's name.
        render: renders the fragment now (errors are rendered, not raised).
        refresh: seconds between two renders.
        clock: the time source.
        on_close: called once when the feed closes (frees its slot).
    """

    def __init__(self, view: str, render: Render, *, refresh: float, clock: Clock,
                 on_close: Callable[[], None]) -> None:
        self._view = view
        self._render = render
        self._refresh = refresh
        self._clock = clock
        self._on_close = on_close
        self._last: str | None = None
        self._position = 0
        self._closed = asyncio.Event()

    @property
    def stream(self) -> str:
        return f"dashboard/{self._view}"

    @property
    def cursor(self) -> Cursor:
        return Cursor(0, self._position)

    def __aiter__(self) -> AsyncIterator[StreamMessage]:
        return self

    async def __anext__(self) -> StreamMessage:
        while not self._closed.is_set():
            if self._last is not None:  # the first render goes out at once
                await self._clock.sleep(self._refresh)  # the response cancels it when it ends
                if self._closed.is_set():
                    break
            html = await self._render()
            if html == self._last:
                continue
            self._last = html
            self._position += 1
            return StreamMessage(self.stream, self.cursor, html.encode(), self._view,
                                 self._position, self._clock.now())
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._on_close()
