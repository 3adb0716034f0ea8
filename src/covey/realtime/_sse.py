"""The SSE endpoint: a stream's items to a browser or any SSE client (STRM-01).

:class:`EventStreamResponse` serves one :class:`~covey.realtime.Subscription`
to one request (a pure ASGI app, so a Starlette route can return it), and
:func:`sse_app` serves ``GET <mount>/<stream name>``, resuming from the
``Last-Event-ID`` header or the ``?after=`` query parameter::

    200  text/event-stream     items, resets, heartbeats; ``retry:`` before it closes
    400  problem+json          a bad stream name (invalid_argument) or cursor (cursor_invalid)
    403  problem+json          the authorization hook refused the stream (stream_forbidden)
    405  problem+json          any method but GET
    503  problem+json          subscribing failed (storage down, pod draining): retry

A stream ends with ``retry: <retry_ms>`` when the subscription ends, when its
buffer overflowed (the client read too slowly), or when ``closing`` is set (the
pod drains). Every write, heartbeats included, must complete within
``send_timeout``: uvicorn stops taking writes while the socket's buffer is full,
so a client that does not read is released after ``send_timeout`` and its
subscription closed, without blocking anything else.

A released response is, to uvicorn, an app that "returned without completing
response": it logs that as an error and closes the connection (once the bytes
already buffered are flushed, or the socket's ``TCP_USER_TIMEOUT`` drops it: see
:func:`~covey.realtime.listen_socket`). Covey logs the release itself, so it
filters that one line out of ``uvicorn.error`` for the responses it released
(a context variable marks them; the server logs it in the request's task).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any

from covey.core import ClusterError, RealtimeError, Reason, metrics
from covey.core.runtime import answer_lifespan, check_seconds, invalid_argument
from covey.realtime._handshake import handshake_of
from covey.realtime._naming import check_stream
from covey.realtime._sse_frames import PING, message_frame, reset_frame, retry_frame
from covey.realtime._subscription import LocalSubscription
from covey.realtime._types import Cursor, Handshake, Reset, StreamMessage, Subscription

log = logging.getLogger("covey.realtime")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: ``subscribe(name, cursor, handshake)``: the subscription to serve (tenant-scoped by the caller)
Subscribe = Callable[[str, Cursor | None, Handshake], Awaitable[Subscription]]
#: ``authorize(handshake, name)``: may this request read the stream?
Authorize = Callable[[Handshake, str], bool | Awaitable[bool]]

KIND = "sse"
STREAM_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"),
                  (b"cache-control", b"no-cache"),
                  # nginx buffers proxied responses unless told not to
                  (b"x-accel-buffering", b"no"))
#: the longest the last frame may take once the stream closes (a drain must not wait longer)
FAREWELL_TIMEOUT = 1.0
#: a refused subscribe that may succeed later: the client retries after this many seconds
RETRY_AFTER = 1

_STATUS = {Reason.STREAM_FORBIDDEN: 403, Reason.FORBIDDEN: 403, Reason.UNAUTHENTICATED: 401,
           Reason.CURSOR_INVALID: 400, Reason.INVALID_ARGUMENT: 400, Reason.RATE_LIMITED: 429}
_UNFINISHED = "ASGI callable returned without completing response."
_released: contextvars.ContextVar[bool] = contextvars.ContextVar("covey_sse_released",
                                                                 default=False)
_END = object()  # the subscription ended
#: items already here that go out in one write
BURST = 64


class _QuietRelease(logging.Filter):
    """Drops uvicorn's error line for a response covey released on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UNFINISHED and _released.get())


_QUIET = _QuietRelease()


class EventStreamResponse:
    """An ASGI app that streams one subscription to one HTTP request.

    Args:
        subscription: what to serve; always closed (``aclose``) when the
            response ends, however it ends.
        heartbeat: seconds without a write after which ``: ping`` is sent.
        send_timeout: seconds any one write may take before the client is
            released (it does not read: frozen, or a half-open socket).
        retry_ms: the ``retry:`` sent before the stream closes: how long the
            client waits before it reconnects.
        closing: set when the pod drains: the stream sends ``retry:`` and
            closes (within about a second).
        headers: more response headers.
    """

    def __init__(self, subscription: Subscription, *, heartbeat: float = 30.0,
                 send_timeout: float = 5.0, retry_ms: int = 1000,
                 closing: asyncio.Event | None = None,
                 headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        self.subscription = subscription
        self.heartbeat = check_seconds("heartbeat", heartbeat, positive=True)
        self.send_timeout = check_seconds("send_timeout", send_timeout, positive=True)
        self.retry_ms = _check_retry(retry_ms)
        self.closing = closing
        pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
        self.headers = [*STREAM_HEADERS,
                        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        logging.getLogger("uvicorn.error").addFilter(_QUIET)  # a no-op after the first time
        metrics.REALTIME_CONNECTIONS.labels(KIND).inc()
        if _resumes(scope):
            metrics.REALTIME_RECONNECTS.labels(KIND).inc()
        try:
            await _Stream(self, send).run(receive)
        finally:
            try:
                await self.subscription.aclose()
            finally:
                metrics.REALTIME_CONNECTIONS.labels(KIND).dec()


class _Stream:
    """One response in progress (the writer side of :class:`EventStreamResponse`)."""

    def __init__(self, response: EventStreamResponse, send: Send) -> None:
        self._r = response
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._deadline: asyncio.Timeout | None = None  # the write in progress's

    def _hurry(self, _: object) -> None:
        """The pod drains: a write in progress may take FAREWELL_TIMEOUT more, at most."""
        if self._deadline is not None:
            when = self._loop.time() + FAREWELL_TIMEOUT
            self._deadline.reschedule(min(self._deadline.when() or when, when))

    async def run(self, receive: Receive) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self._r.headers}
        if not await self._write(start, self._r.send_timeout):
            return
        if isinstance(self._r.subscription, LocalSubscription):
            await self._run_local(self._r.subscription, receive)
            return
        gone = asyncio.create_task(_disconnected(receive))
        closing = asyncio.create_task(self._r.closing.wait()) if self._r.closing else None
        watchers = {gone} if closing is None else {gone, closing}
        if closing is not None:
            closing.add_done_callback(self._hurry)
        upcoming: asyncio.Task[object] | None = None
        try:
            last_write = self._loop.time()
            while True:
                if upcoming is None:
                    # a task that outlives heartbeats: cancelling a pending __anext__
                    # would end a generator-based subscription
                    upcoming = asyncio.create_task(self._next())
                idle = last_write + self._r.heartbeat - self._loop.time()
                done, _ = await asyncio.wait({upcoming, *watchers}, timeout=max(idle, 0.0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    return  # the client left: nothing more to write
                if closing is not None and closing in done:
                    await self._farewell()
                    return
                if upcoming in done:
                    item, upcoming = upcoming.result(), None
                    if item is _END:
                        await self._farewell()
                        return
                    if not await self._body(_frame(item), self._r.send_timeout):
                        return
                    if isinstance(item, StreamMessage):
                        metrics.REALTIME_ITEMS_SENT.labels(KIND).inc()
                elif not await self._body(PING, self._r.send_timeout):
                    return
                last_write = self._loop.time()
        finally:
            tasks = [t for t in (upcoming, *watchers) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_local(self, sub: LocalSubscription, receive: Receive) -> None:
        """:meth:`run` for covey's own subscriptions, whose ``__anext__`` may be
        cancelled safely: it is awaited directly under the heartbeat's timeout (no
        task and no ``asyncio.wait`` per item: a fan-out to thousands of clients
        wakes each stream once), and a burst that is already here goes out in one
        write. A disconnect or the pod draining stops the subscription, which ends
        the wait."""
        why: list[str] = []

        def stop(reason: str) -> Callable[[object], None]:
            def stopped(_: object) -> None:
                why.append(reason)
                sub.stop()
            return stopped

        gone = asyncio.create_task(_disconnected(receive))
        gone.add_done_callback(stop("gone"))
        closing = asyncio.create_task(self._r.closing.wait()) if self._r.closing else None
        if closing is not None:
            closing.add_done_callback(stop("closing"))
            closing.add_done_callback(self._hurry)
        heartbeat, timeout = self._r.heartbeat, self._r.send_timeout
        try:
            while True:
                try:
                    async with asyncio.timeout(heartbeat):
                        item = await self._next()
                except TimeoutError:
                    if not await self._body(PING, timeout):
                        return
                    continue
                if item is _END:
                    if not why or why[0] == "closing":
                        await self._farewell()
                    return
                burst = [item, *sub.take_ready(BURST)]
                data = b"".join(_frame(i) for i in burst)
                if not await self._body(data, timeout):
                    return
                sent = sum(1 for i in burst if isinstance(i, StreamMessage))
                if sent:
                    metrics.REALTIME_ITEMS_SENT.labels(KIND).inc(sent)
        finally:
            tasks = [t for t in (gone, closing) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _next(self) -> object:
        """The subscription's next item, or ``_END`` once it ended (by any cause)."""
        subscription = self._r.subscription
        try:
            return await subscription.__anext__()
        except StopAsyncIteration:
            return _END
        except ClusterError as exc:
            if exc.reason is Reason.SLOW_CONSUMER:
                metrics.REALTIME_OVERFLOWS.labels(KIND).inc()
                log.info("SSE stream %s: the client fell behind (buffer overflow); closing "
                         "it to resume from %s", subscription.stream, subscription.cursor)
            else:
                # storage down, the pod draining...: the client resumes elsewhere or later
                log.warning("SSE stream %s failed (%s): closing it", subscription.stream,
                            exc.reason.value)
            return _END

    async def _farewell(self) -> None:
        # bounded by FAREWELL_TIMEOUT too: a drain must not wait send_timeout for a frozen client
        timeout = min(self._r.send_timeout, FAREWELL_TIMEOUT)
        await self._write({"type": "http.response.body", "body": retry_frame(self._r.retry_ms),
                           "more_body": False}, timeout)

    async def _body(self, data: bytes, timeout: float) -> bool:
        return await self._write({"type": "http.response.body", "body": data,
                                  "more_body": True}, timeout)

    async def _write(self, message: Message, timeout: float) -> bool:
        """Send ``message``; ``False`` when the client is gone or did not take it in time."""
        try:
            async with asyncio.timeout(timeout) as self._deadline:
                await self._send(message)
        except TimeoutError:
            metrics.REALTIME_SLOW_DISCONNECTS.labels(KIND).inc()
            log.info("SSE stream %s: the client did not take a write in time; released it",
                     self._r.subscription.stream)
            _released.set(True)
            return False
        except OSError:
            return False  # servers that raise on a closed connection: the client left
        finally:
            self._deadline = None
        return True


def _frame(item: object) -> bytes:
    if isinstance(item, StreamMessage):
        return message_frame(item)
    if isinstance(item, Reset):
        return reset_frame(item)
    raise TypeError(f"a subscription yielded {type(item).__name__}, not a StreamMessage or Reset")


async def _disconnected(receive: Receive) -> None:
    """Returns once the client disconnected (a GET's body is empty: nothing else comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _resumes(scope: Scope) -> bool:
    """Did the request come with a cursor (a client resuming)?"""
    if any(bytes(name).lower() == b"last-event-id" and value
           for name, value in scope.get("headers") or ()):
        return True
    query = bytes(scope.get("query_string") or b"")
    return any(part.startswith(b"after=") and len(part) > 6 for part in query.split(b"&"))


def _check_retry(retry_ms: object) -> int:
    if isinstance(retry_ms, bool) or not isinstance(retry_ms, int) or retry_ms < 0:
        raise invalid_argument("retry_ms", "must be an int >= 0 (milliseconds)")
    return retry_ms


def sse_app(subscribe: Subscribe, *, authorize: Authorize | None = None,
            heartbeat: float = 30.0, send_timeout: float = 5.0, retry_ms: int = 1000,
            closing: asyncio.Event | None = None) -> ASGIApp:
    """An ASGI app serving ``GET <mount>/<stream name>`` as server-sent events.

    Mount it (``Mount("/streams", app=sse_app(...))``) or run it on its own. The
    stream name is the path below the mount; the cursor comes from the
    ``Last-Event-ID`` header, else from ``?after=``.

    Args:
        subscribe: ``subscribe(name, cursor, handshake)`` returns the
            subscription to serve (scoped to ``handshake.tenant`` by the caller).
        authorize: ``authorize(handshake, name)`` (sync or async) returns
            ``True`` when the request may read the stream (anything else
            refuses it: 403); ``None``: anyone may. ``EventSource`` cannot set
            headers: browsers authenticate with a cookie or a short-lived
            ticket in the query (``handshake.query``).
        heartbeat: see :class:`EventStreamResponse`.
        send_timeout: see :class:`EventStreamResponse`.
        retry_ms: see :class:`EventStreamResponse`.
        closing: see :class:`EventStreamResponse`.
    """
    return _SseApp(subscribe, authorize, closing, heartbeat=check_seconds(
        "heartbeat", heartbeat, positive=True), send_timeout=check_seconds(
        "send_timeout", send_timeout, positive=True), retry_ms=_check_retry(retry_ms))


class _SseApp:
    def __init__(self, subscribe: Subscribe, authorize: Authorize | None,
                 closing: asyncio.Event | None, *, heartbeat: float, send_timeout: float,
                 retry_ms: int) -> None:
        self._subscribe = subscribe
        self._authorize = authorize
        self._closing = closing
        self._heartbeat = heartbeat
        self._send_timeout = send_timeout
        self._retry_ms = retry_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # run on its own: nothing to start
            await answer_lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # refused: HTTP 403
            return
        if scope["type"] != "http":
            return
        if scope.get("method") != "GET":
            await _problem(send, 405, Reason.INVALID_ARGUMENT, "use GET", [(b"allow", b"GET")])
            return
        try:
            name = check_stream(_stream_name(scope))
            handshake = handshake_of(scope)
            cursor = Cursor.parse(handshake.headers.get("last-event-id")
                                  or handshake.query.get("after"))
            if not await self._allowed(handshake, name):
                raise RealtimeError(f"reading stream {name!r} is not allowed",
                                    reason=Reason.STREAM_FORBIDDEN, stream=name)
            subscription = await self._subscribe(name, cursor, handshake)
        except ClusterError as exc:
            status = _STATUS.get(exc.reason, 503)
            if status == 503:
                log.warning("SSE subscribe refused (%s): %s", exc.reason.value, exc)
            extra = [(b"retry-after", str(RETRY_AFTER).encode())] if status == 503 else []
            await _problem(send, status, exc.reason, str(exc), extra)
            return
        await EventStreamResponse(
            subscription, heartbeat=self._heartbeat, send_timeout=self._send_timeout,
            retry_ms=self._retry_ms, closing=self._closing)(scope, receive, send)

    async def _allowed(self, handshake: Handshake, name: str) -> bool:
        if self._authorize is None:
            return True
        verdict = self._authorize(handshake, name)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True


def _stream_name(scope: Scope) -> str:
    """The (already URL-decoded) path below the mount.

    Starlette's ``Mount`` (and uvicorn's ``--root-path``) keep the full path in
    ``path`` and the mount's prefix in ``root_path``; older servers strip it.
    """
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        path = path[len(root):]
    return path.removeprefix("/")


async def _problem(send: Send, status: int, reason: Reason, detail: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"type": "about:blank", "title": HTTPStatus(status).phrase,
                       "status": status, "reason": reason.value, "detail": detail}).encode()
    headers = [(b"content-type", b"application/problem+json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

