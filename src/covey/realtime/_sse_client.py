"""A Python SSE client that reconnects and resumes (WS-01 for SSE), on aiohttp.

::

    async with connect_sse("https://app/streams/orders", after=saved) as events:
        async for item in events:       # StreamMessage, or Reset: refetch your state
            handle(item)
            saved = events.cursor

It reconnects at once after a drop, then after :class:`~covey.realtime.Backoff`
delays (full jitter, capped at ``cap``), sending ``Last-Event-ID`` with the
last cursor it delivered; the server resumes from there, so nothing is missed
or repeated. A ``retry:`` from the server (sent when it closes a stream: a
drain, an overflow) is the least delay of the next attempt, capped by ``cap``.
A connection silent for longer than ``read_timeout`` (three missed heartbeats
by default) counts as dead. It stops for good on HTTP 204 (the iteration
ends) and on a 4xx other than 408 and 429 (:class:`~covey.RealtimeError` with
the problem's ``reason``); any other answer or failure is retried.

The SSE wire carries an item's cursor, event name and data only: a delivered
:class:`~covey.realtime.StreamMessage` has ``id=0`` and ``published_at=0.0``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiohttp

from covey.core import RealtimeError, Reason
from covey.core.runtime import check_seconds
from covey.realtime._backoff import DEFAULT_CAP, Backoff
from covey.realtime._sse_frames import RESET_EVENT, SseEvent, SseParser
from covey.realtime._types import Cursor, Reset, StreamMessage

log = logging.getLogger("covey.realtime")

State = Literal["connecting", "open", "closed"]
OnReconnect = Callable[[int], object | Awaitable[object]]

#: the default ``read_timeout``: three heartbeats of the server's default 30 s
DEFAULT_READ_TIMEOUT = 90.0
#: the longest a TCP connect may take
CONNECT_TIMEOUT = 10.0
#: the most of an error body read to find the problem's reason
MAX_PROBLEM_BYTES = 65_536
_RETRIED_4XX = (408, 429)


def connect_sse(url: str, *, after: Cursor | str | None = None,
                headers: Mapping[str, str] | None = None, cap: float = DEFAULT_CAP,
                read_timeout: float | None = None, on_reconnect: OnReconnect | None = None,
                session: aiohttp.ClientSession | None = None) -> SseClient:
    """An :class:`SseClient` of ``url`` (it connects on first use).

    Args:
        url: the stream's URL; its last path segment is the stream's name.
        after: resume after this cursor (``None``: from now).
        headers: more request headers (``Authorization``, cookies...).
        cap: the longest delay between reconnect attempts (seconds).
        read_timeout: seconds of silence after which the connection counts as
            dead (``None``: 90, three of the server's default heartbeats).
        on_reconnect: called (sync or async) after each reconnection with its
            number (1, 2, ...); an exception it raises reaches the iterating code.
        session: the aiohttp session to use (``None``: one of its own, closed
            with the client).

    Raises:
        ClusterError: ``invalid_argument`` for a non-positive ``cap`` or
            ``read_timeout``; RealtimeError: ``cursor_invalid`` for a bad ``after``.
    """
    return SseClient(url, after=after, headers=headers, cap=cap, read_timeout=read_timeout,
                     on_reconnect=on_reconnect, session=session)


class SseClient:
    """An async iterator of a stream's :class:`StreamMessage` and :class:`Reset` items
    that survives disconnects (see the module docstring; made by :func:`connect_sse`).

    Attributes:
        url: the stream's URL.
        stream: the stream's name (the URL's last path segment).
        state: ``"connecting"`` (before the first connection and between two),
            ``"open"``, or ``"closed"`` (for good).
        cursor: the cursor of the last item delivered (where it resumes).
        reconnects: how many times it connected again after a drop.
    """

    def __init__(self, url: str, *, after: Cursor | str | None = None,
                 headers: Mapping[str, str] | None = None, cap: float = DEFAULT_CAP,
                 read_timeout: float | None = None, on_reconnect: OnReconnect | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.url = url
        self.stream = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
        self.cursor: Cursor | None = after if isinstance(after, Cursor) or after is None \
            else Cursor.parse(after)
        self.state: State = "connecting"
        self.reconnects = 0
        self._cap = check_seconds("cap", cap, positive=True)
        self._read_timeout = DEFAULT_READ_TIMEOUT if read_timeout is None \
            else check_seconds("read_timeout", read_timeout, positive=True)
        self._headers = dict(headers or {})
        self._on_reconnect = on_reconnect
        self._session = session
        self._own_session = session is None
        self._backoff = Backoff(cap=self._cap)
        self._response: aiohttp.ClientResponse | None = None
        self._parser = SseParser()
        self._events: deque[SseEvent] = deque()
        self._retry_hint: float | None = None  # seconds, from the server's retry:
        self._opened = False

    def __aiter__(self) -> SseClient:
        return self

    async def __aenter__(self) -> SseClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def __anext__(self) -> StreamMessage | Reset:
        while True:
            if self.state == "closed":
                raise StopAsyncIteration
            if self._events:
                item = self._item_of(self._events.popleft())
                if item is not None:
                    return item
            elif self._response is None:
                await self._connect()
            else:
                await self._read()

    async def aclose(self) -> None:
        """Stop for good: the connection (and a session of its own) is closed."""
        self.state = "closed"
        self._events.clear()
        self._drop()
        if self._own_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # connecting

    async def _connect(self) -> None:
        """Open a connection (retrying with backoff), or stop: closed, 204, a final 4xx."""
        while not self._closed():
            delay = self._backoff.next_delay()
            if self._retry_hint is not None:
                delay = max(delay, min(self._retry_hint, self._cap))
                self._retry_hint = None
            if delay:
                await asyncio.sleep(delay)
                if self._closed():
                    return  # closed while it waited: no new session
            response = await self._request()
            if response is not None and await self._accepted(response):
                self._response = response
                self._parser = SseParser()
                self.state = "open"
                if self._opened:
                    self.reconnects += 1
                    await self._call_on_reconnect()
                self._opened = True
                return

    async def _request(self) -> aiohttp.ClientResponse | None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"accept": "text/event-stream", "cache-control": "no-cache", **self._headers}
        if self.cursor is not None:
            headers["last-event-id"] = str(self.cursor)
        # aiohttp's sock_read timeout covers every read of the body: a silence longer
        # than read_timeout fails the read, heartbeats included
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self._read_timeout,
                                        sock_connect=min(CONNECT_TIMEOUT, self._read_timeout))
        try:
            # the status decides below, whatever the caller's session was made to raise
            return await self._session.get(self.url, headers=headers, timeout=timeout,
                                           raise_for_status=False)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("SSE %s: connecting failed: %r", self.url, exc)
            return None

    async def _accepted(self, response: aiohttp.ClientResponse) -> bool:
        """Is ``response`` a stream to read? ``False``: retry; raises or closes when final."""
        status = response.status
        if status == 200 and response.content_type == "text/event-stream":
            if not self._closed():
                return True
            response.close()  # closed while it was connecting
            return False
        problem: RealtimeError | None = None
        try:
            if status == 200 or (400 <= status < 500 and status not in _RETRIED_4XX):
                problem = await self._problem(response)
            else:
                self._retry_hint = _retry_after(response)
        finally:
            response.release()
        if status == 204 or problem is not None:
            await self.aclose()  # 204: the server says "do not reconnect"
            if problem is not None:
                raise problem
        else:
            log.debug("SSE %s: HTTP %d, retrying", self.url, status)
        return False

    async def _problem(self, response: aiohttp.ClientResponse) -> RealtimeError:
        """The error a final refusal raises (its problem's ``reason`` when it has one)."""
        fallback = {401: Reason.UNAUTHENTICATED, 403: Reason.FORBIDDEN}.get(
            response.status, Reason.INVALID_ARGUMENT)
        if response.status == 200:
            return RealtimeError(f"{self.url} is not an event stream ({response.content_type})",
                                 reason=fallback, status=200)
        detail = ""
        try:
            body = json.loads(await response.content.read(MAX_PROBLEM_BYTES))
            reason = Reason(body["reason"])
            detail = str(body.get("detail", ""))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError):
            reason = fallback
        return RealtimeError(f"{self.url} refused the stream: HTTP {response.status}"
                             + (f": {detail}" if detail else ""), reason=reason,
                             status=response.status)

    async def _call_on_reconnect(self) -> None:
        if self._on_reconnect is not None:
            result = self._on_reconnect(self.reconnects)
            if inspect.isawaitable(result):
                await result

    # reading

    async def _read(self) -> None:
        """Read what the connection has next; drop it when it failed or ended."""
        assert self._response is not None
        try:
            chunk = await self._response.content.readany()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("SSE %s: connection lost: %r", self.url, exc)
            chunk = b""
        if not chunk:
            self._drop()
            return
        self._events.extend(self._parser.feed(chunk))
        if self._parser.lines:
            self._backoff.reset()  # this connection worked: the next drop retries at once
        if self._parser.retry is not None:
            self._retry_hint, self._parser.retry = self._parser.retry / 1000, None

    def _closed(self) -> bool:
        # a method, not an inline test: another task's aclose() changes state while we wait
        return self.state == "closed"

    def _drop(self) -> None:
        if self._response is not None:
            response, self._response = self._response, None
            response.close()
        if self.state == "open":
            self.state = "connecting"

    def _item_of(self, event: SseEvent) -> StreamMessage | Reset | None:
        """The item ``event`` delivers; ``None`` for none (no cursor, or seen already)."""
        try:
            cursor = Cursor.parse(event.id)
        except RealtimeError:
            cursor = None
        if cursor is None:
            log.debug("SSE %s: an event without a valid id (%r) was skipped", self.url,
                      event.id)
            return None
        if event.event == RESET_EVENT:
            self.cursor = cursor
            return Reset(stream=self.stream, cursor=cursor)
        last = self.cursor
        if last is not None and cursor.epoch == last.epoch and cursor.position <= last.position:
            return None  # a guard: a correct server never repeats an item
        self.cursor = cursor
        return StreamMessage(stream=self.stream, cursor=cursor, data=event.data.encode(),
                             event=None if event.event == "message" else event.event,
                             id=0, published_at=0.0)


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None
