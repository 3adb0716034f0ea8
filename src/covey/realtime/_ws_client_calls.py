"""The calls of the Python WebSocket client: pending replies, streams, repeated pushes.

A call waits in the client's buffer while there is no connection (bounded, each
until its deadline), then in the pending table once its request is sent. A
socket that drops fails the pending calls with ``peer_unavailable``
(retryable): the request may have run, so the client never resends it by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp
import pydantic

from covey.core import RealtimeError, Reason
from covey.realtime._codec import too_large
from covey.realtime._contract import MethodSpec
from covey.realtime._ws_client_socket import ClientSocket

T = TypeVar("T")

#: the push ids a client remembers, to drop a message delivered twice
REMEMBERED_MIDS = 10_000


def remote_error(frame: dict[str, Any]) -> RealtimeError:
    """The error an ``err`` frame reports (its reason, message and details)."""
    raw = str(frame.get("r"))
    message = frame.get("msg")
    found = frame.get("d")
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        reason = Reason(raw)
    except ValueError:
        reason = Reason.REMOTE_FAILURE
        details = {**details, "remote_reason": str(raw)[:100]}
    return RealtimeError(str(message)[:1000] if message is not None else str(reason),
                         reason=reason, **{str(k): v for k, v in details.items()})


def dropped() -> RealtimeError:
    """The error of a call whose socket dropped after its request was sent."""
    return RealtimeError("the connection dropped while the call was in flight; it may or may "
                         "not have run", reason=Reason.PEER_UNAVAILABLE)


def params_of(spec: MethodSpec, params: Any) -> Any:
    """The wire form of a call's argument, validated against the contract."""
    if spec.params is None:
        if params is not None:
            raise RealtimeError(f"{spec.name} takes no argument", reason=Reason.INVALID_ARGUMENT,
                                field="params")
        return None
    try:
        model = params if isinstance(params, spec.params) else spec.params.model_validate(params)
    except pydantic.ValidationError as exc:
        raise RealtimeError(f"invalid params for {spec.name}: {exc.error_count()} error(s)",
                            reason=Reason.PAYLOAD_INVALID,
                            fields=[".".join(map(str, e["loc"])) for e in exc.errors()[:20]]) \
            from None
    return model.model_dump(mode="json")


def result_of(spec: MethodSpec, payload: Any) -> Any:
    """A result (or a chunk) as the contract's model."""
    if spec.result is None:
        return None
    try:
        return spec.result.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise RealtimeError(f"the server's reply to {spec.name} does not match the contract: "
                            f"{exc.error_count()} error(s)", reason=Reason.PAYLOAD_INVALID) \
            from None


@dataclass(eq=False)
class Call:
    """One call: buffered, then pending, then answered.

    Attributes:
        spec: the method.
        params: the argument, in wire form.
        deadline: the loop time after which it fails with ``timeout``
            (``None``: a stream once sent, which may run for long).
        id: its request id once sent.
        future: its reply (a unary call).
        stream: where its chunks go (a streamed call).
    """

    spec: MethodSpec
    params: Any
    deadline: float | None
    id: int | None = None
    future: asyncio.Future[Any] | None = None
    stream: StreamCall[Any] | None = None
    sent: asyncio.Event = field(default_factory=asyncio.Event)

    def fail(self, error: BaseException) -> None:
        """End the call with ``error``."""
        self.sent.set()  # nothing waits to send it any more
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)
        if self.stream is not None:
            self.stream.fail(error)


class CallTable:
    """The calls of one client: buffered (waiting for a connection, in order) and
    pending (sent, by request id).

    Args:
        buffer: calls that may wait for a connection.
        max_frame: the largest request sent, in bytes.
    """

    def __init__(self, *, buffer: int, max_frame: int) -> None:
        self.pending: dict[int, Call] = {}
        self.buffered: deque[Call] = deque()
        self._buffer = buffer
        self._max_frame = max_frame
        self._ids = itertools.count(1)

    def hold(self, call: Call) -> None:
        """Keep ``call`` until the connection is back.

        Raises:
            RealtimeError: ``rate_limited`` when ``buffer`` calls wait already.
        """
        if len(self.buffered) >= self._buffer:
            raise RealtimeError(f"{len(self.buffered)} calls already wait for the connection",
                                reason=Reason.RATE_LIMITED)
        self.buffered.append(call)

    async def send(self, call: Call, ws: ClientSocket) -> None:
        """Send ``call``'s request on ``ws`` (back to the buffer's head if the socket
        is going: it was not written).

        Raises:
            RealtimeError: ``frame_too_large``: the request exceeds ``max_frame``.
        """
        call.id = next(self._ids)
        frame: dict[str, Any] = {"t": "req", "id": call.id, "m": call.spec.name}
        if call.params is not None:
            frame["p"] = call.params
        data = ws.codec.encode(frame)
        if too_large(data, self._max_frame):
            raise RealtimeError(f"the request is larger than {self._max_frame} bytes",
                                reason=Reason.FRAME_TOO_LARGE)
        self.pending[call.id] = call
        try:
            await ws.send_data(data)
        except (aiohttp.ClientError, OSError, RuntimeError):
            self.pending.pop(call.id, None)
            self.buffered.appendleft(call)
            return
        call.sent.set()
        if call.stream is not None:
            call.deadline = None  # a stream may run for long once sent

    async def flush(self, ws: ClientSocket) -> None:
        """Send the buffered calls, oldest first (calls made meanwhile queue behind)."""
        while self.buffered:
            call = self.buffered.popleft()
            try:
                await self.send(call, ws)
            except RealtimeError as exc:
                call.fail(exc)
                continue
            if not call.sent.is_set():
                return  # the socket is going already

    def forget(self, call: Call) -> int | None:
        """Drop ``call``; its request id if it was sent (tell the server to stop it)."""
        with contextlib.suppress(ValueError):
            self.buffered.remove(call)
        if call.id is not None and self.pending.get(call.id) is call:
            del self.pending[call.id]
            return call.id
        return None

    def answered(self, kind: str, frame: dict[str, Any]) -> None:
        """A ``res``, ``err``, ``chunk`` or ``end`` frame arrived (late ones are dropped)."""
        call_id = frame.get("id")
        if not isinstance(call_id, int) or call_id not in self.pending:
            return  # the call timed out or was cancelled
        call = self.pending[call_id]
        if kind == "chunk":
            if call.stream is not None:
                call.stream.chunk(frame.get("p"))
            return
        del self.pending[call_id]
        if kind == "res" and call.future is not None and not call.future.done():
            call.future.set_result(frame.get("p"))
        elif kind == "err":
            call.fail(remote_error(frame))
        elif call.stream is not None:
            call.stream.end()

    def fail_pending(self) -> None:
        """The socket dropped: the calls sent fail with ``peer_unavailable``."""
        calls = list(self.pending.values())
        self.pending.clear()
        for call in calls:
            call.fail(dropped())

    def fail_all(self, error: RealtimeError) -> None:
        """Every call fails with ``error`` (the client stops)."""
        calls = [*self.pending.values(), *self.buffered]
        self.pending.clear()
        self.buffered.clear()
        for call in calls:
            call.fail(error)


_END = object()


class StreamCall(Generic[T]):
    """The chunks of a streamed call: ``async for item in client.history(...)``.

    The request is sent on the first iteration (or ``await``, or ``async
    with``). Leave early with :meth:`aclose` (or the ``async with`` block): the
    server is told to stop. A consumer that falls more than ``capacity``
    chunks behind loses the stream (``slow_consumer``) rather than stall the
    connection's other calls.
    """

    def __init__(self, spec: MethodSpec, params: Any, *, capacity: int,
                 start: Callable[[StreamCall[T]], Any],
                 cancel: Callable[[StreamCall[T]], None]) -> None:
        self.spec = spec
        self.params = params
        self.call: Call | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._capacity = capacity
        self._start = start
        self._cancel = cancel
        self._started = False
        self._done = False

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    def __await__(self) -> Generator[Any, None, StreamCall[T]]:
        # the contract declares `async def history(...) -> AsyncIterator[Msg]`, so typed
        # code awaits the call first: that starts the stream and gives the iterator
        yield from self._begin().__await__()
        return self

    async def __aenter__(self) -> StreamCall[T]:
        await self._begin()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _begin(self) -> None:
        if not self._started:
            self._started = True
            await self._start(self)

    async def __anext__(self) -> T:
        await self._begin()
        if self._done and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        result: T = result_of(self.spec, item)
        return result

    def chunk(self, payload: Any) -> None:
        """A chunk arrived (the client's reader calls this)."""
        if self._done:
            return
        if self._queue.qsize() >= self._capacity:
            self._cancel(self)
            self.fail(RealtimeError(f"the consumer of {self.spec.name} fell more than "
                                    f"{self._capacity} chunks behind",
                                    reason=Reason.SLOW_CONSUMER))
            return
        self._queue.put_nowait(payload)

    def end(self) -> None:
        """The stream ended."""
        if not self._done:
            self._queue.put_nowait(_END)

    def fail(self, error: BaseException) -> None:
        """The stream failed: items already received come first, then ``error``."""
        if not self._done:
            self._queue.put_nowait(error)

    async def aclose(self) -> None:
        """Stop: the server is told to stop the stream; iteration ends."""
        if self._started and not self._done:
            self._cancel(self)
        self._done = True
        while not self._queue.empty():
            self._queue.get_nowait()


class SeenMids:
    """The last :data:`REMEMBERED_MIDS` push ids, to drop a push delivered twice."""

    def __init__(self, size: int = REMEMBERED_MIDS) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first_time(self, mid: Any) -> bool:
        """Whether ``mid`` is new (it is remembered from now on)."""
        key = str(mid)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)
