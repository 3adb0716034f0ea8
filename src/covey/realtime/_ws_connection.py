"""One served WebSocket: its reader, its writer, its calls and its pushes.

The reader takes one frame at a time (the ASGI server reads the next only when
asked), checks its size, the rate limit and its shape, and either answers it
at once (errors, pongs, cancels) or starts the call as a task of the
connection. Everything sent goes through one bounded queue (:class:`Outbox`)
drained by the writer, under ``send_timeout`` per frame. The connection ends
when the peer goes away or a close frame was sent; its calls are cancelled then.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pydantic

from covey.core import Clock, ClusterError, RealtimeError, Reason, metrics
from covey.realtime._codec import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHENTICATED,
    EXPIRED_REASON,
    FrameCodec,
    FrameRefused,
    Inbound,
    Wire,
    error_frame,
    parse_frame,
    plain_details,
    too_large,
)
from covey.realtime._contract import MethodSpec, PushSpec, methods_of, pushes_of
from covey.realtime._types import Handshake, Principal
from covey.realtime._ws_asgi import Receive, Send
from covey.realtime._ws_auth import refusal_for
from covey.realtime._ws_limits import Close, Outbox, RateLimit, WebSocketOptions

if TYPE_CHECKING:
    from covey.realtime._contract import Contract

log = logging.getLogger("covey.realtime")

KIND = "websocket"
Hook = Callable[["Connection"], Awaitable[None]]
#: what receives the ids of an ``ack`` frame (the pushes the client received)
AckHook = Callable[[tuple[str, ...]], Awaitable[None]]
_MAX_FIELDS = 20


def _validation_summary(error: pydantic.ValidationError) -> tuple[str, list[str]]:
    """A short message and the field paths of a validation error (never the input)."""
    fields: list[str] = []
    parts: list[str] = []
    for item in error.errors(include_input=False)[:_MAX_FIELDS]:
        path = ".".join(str(p) for p in item["loc"])[:200] or "<root>"
        fields.append(path)
        if len(parts) < 5:
            parts.append(f"{path}: {item['msg']}")
    return "invalid params: " + "; ".join(parts), fields


class Connection:
    """A client's WebSocket, as handlers (``self.connection``) and hooks see it.

    Attributes:
        id: unique among this pod's connections.
        principal: who the connection belongs to (the authentication hook's answer).
        handshake: the request that opened it.
        codec: ``"json"`` or ``"msgpack"``.
        close_code: the code of the close frame sent (``None``: none sent, e.g.
            the peer went away first).
        on_ack: awaited with the ids of each ``ack`` frame, in the reader (set by
            whoever hands the connection messages that wait for an ack: presence);
            ``None``: acks are taken and ignored.
    """

    def __init__(self, contract: type[Contract], *, codec: FrameCodec, principal: Principal,
                 handshake: Handshake, options: WebSocketOptions, clock: Clock) -> None:
        self.id = uuid.uuid4().hex
        self.principal = principal
        self.handshake = handshake
        self.codec = codec.name
        self._codec = codec
        self._methods: Mapping[str, MethodSpec] = methods_of(contract)
        self._pushes: Mapping[str, PushSpec] = pushes_of(contract)
        self._options = options
        self._clock = clock
        self._outbox = Outbox(options.queue_frames, options.queue_bytes)
        self._rate = None if options.rate is None else RateLimit(options.rate, clock.monotonic())
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._instance: Any = None
        self._group: asyncio.TaskGroup | None = None
        self._ended = asyncio.Event()
        self._last_sent = clock.monotonic()
        self.close_code: int | None = None
        self.on_ack: AckHook | None = None

    # ---- what handlers and hooks use -------------------------------------

    @property
    def closed(self) -> bool:
        """No more frames are taken (closing or closed)."""
        return self._outbox.closed

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return len(self._calls)

    @property
    def queued(self) -> tuple[int, int]:
        """Frames and bytes waiting to be sent."""
        return len(self._outbox), self._outbox.bytes

    def push(self, name: str, payload: pydantic.BaseModel, *, mid: str | None = None) -> bool:
        """Queue the push ``name`` of the contract (see :meth:`deliver`)."""
        return self.deliver(name, payload, mid=mid)

    def deliver(self, name: str, payload: bytes | str | pydantic.BaseModel, *,
                mid: str | None = None) -> bool:
        """Queue the push ``name`` without waiting (callable from any task of the loop).

        Args:
            name: a push of the contract.
            payload: its model, or the model as JSON (validated against it).
            mid: an id that lets clients drop a message delivered twice.

        Returns:
            Whether it was queued. ``False`` for an unknown push, a payload that
            does not validate or is larger than ``max_frame`` (each logged), and
            for a closed connection. A full send queue closes the connection with
            1013 (the client reconnects and catches up) and returns ``False``.
        """
        spec = self._pushes.get(name)
        if spec is None:
            log.warning("WebSocket push %r is not declared by the contract", name)
            return False
        if self._outbox.closed:
            return False
        try:
            model = payload if isinstance(payload, spec.model) else (
                spec.model.model_validate(payload) if isinstance(payload, pydantic.BaseModel)
                else spec.model.model_validate_json(payload))
            frame: dict[str, Any] = {"t": "push", "n": name, "p": model.model_dump(mode="json")}
            if mid is not None:
                frame["mid"] = mid
            data = self._codec.encode(frame)
        except (ValueError, TypeError, OverflowError) as exc:  # pydantic's errors are ValueErrors
            log.warning("WebSocket push %r refused: %s", name, str(exc)[:300])
            return False
        if too_large(data, self._options.max_frame):
            log.warning("WebSocket push %r refused: larger than max_frame", name)
            return False
        if self._outbox.offer(data, push=True):
            return True
        metrics.REALTIME_OVERFLOWS.labels(KIND).inc()
        log.info("WebSocket %s closed: its send queue overflowed", self.id)
        self.abort(CLOSE_TRY_AGAIN, "try again later")
        return False

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close after the frames queued so far are sent."""
        self._outbox.close(code, reason.encode()[:120].decode("utf-8", "ignore"), flush=True)

    def abort(self, code: int, reason: str = "") -> None:
        """Close now: frames still queued are dropped."""
        self._outbox.close(code, reason.encode()[:120].decode("utf-8", "ignore"), flush=False)

    # ---- serving ---------------------------------------------------------

    async def serve(self, instance: Any, receive: Receive, send: Send, *,
                    on_connect: Hook | None, closing: asyncio.Event | None) -> None:
        """Serve frames until the peer goes away or a close frame is sent."""
        self._instance = instance
        metrics.REALTIME_CONNECTIONS.labels(KIND).inc()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                background = [group.create_task(self._write(send), name="covey-ws-writer"),
                              group.create_task(self._keepalive(), name="covey-ws-ping")]
                if self.principal.expires_at is not None:
                    background.append(group.create_task(self._expire(self.principal.expires_at)))
                if closing is not None:
                    background.append(group.create_task(self._drain_on(closing)))
                if on_connect is not None:
                    await self._connected(on_connect)
                if not self._outbox.closed:
                    background.append(group.create_task(self._read(receive),
                                                        name="covey-ws-reader"))
                await self._ended.wait()
                for task in [*background, *self._calls.values()]:
                    task.cancel()
        finally:
            self._outbox.close(0, "", flush=False)
            metrics.REALTIME_CONNECTIONS.labels(KIND).dec()

    async def _connected(self, on_connect: Hook) -> None:
        try:
            await on_connect(self)
        except ClusterError as exc:
            refusal = refusal_for(exc)
            self.abort(refusal.code, refusal.reason)
        except Exception:
            log.exception("the WebSocket on_connect hook raised")
            self.abort(CLOSE_INTERNAL, "on_connect failed")

    async def _write(self, send: Send) -> None:
        timeout = self._options.send_timeout
        try:
            while True:
                item = await self._outbox.get()
                if item is None:
                    return
                if isinstance(item, Close):
                    self.close_code = item.code
                    async with asyncio.timeout(timeout):
                        await send({"type": "websocket.close", "code": item.code,
                                    "reason": item.reason})
                    return
                message = ({"type": "websocket.send", "bytes": item.data}
                           if isinstance(item.data, bytes)
                           else {"type": "websocket.send", "text": item.data})
                try:
                    async with asyncio.timeout(timeout):
                        await send(message)
                except TimeoutError:
                    metrics.REALTIME_SLOW_DISCONNECTS.labels(KIND).inc()
                    log.info("WebSocket %s released: a frame took over %.1f s to send",
                             self.id, timeout)
                    return
                self._last_sent = self._clock.monotonic()
                if item.push:
                    metrics.REALTIME_ITEMS_SENT.labels(KIND).inc()
        except (OSError, RuntimeError, TimeoutError):
            # the peer went away (uvicorn raises an OSError, other servers a
            # RuntimeError for a send after the disconnect)
            return
        finally:
            self._outbox.close(0, "", flush=False)
            self._ended.set()

    async def _read(self, receive: Receive) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message["type"] != "websocket.receive":
                    continue
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                if data is not None:
                    await self._on_message(data)
        except OSError:
            return  # the peer went away (a server that raises instead of a disconnect)
        finally:
            self._outbox.close(0, "", flush=False)
            self._ended.set()

    async def _keepalive(self) -> None:
        interval = self._options.ping_interval
        while True:
            await self._clock.sleep(interval - (self._clock.monotonic() - self._last_sent))
            if self._clock.monotonic() - self._last_sent >= interval:
                self._outbox.offer(self._codec.encode({"t": "ping"}))
                self._last_sent = self._clock.monotonic()

    async def _expire(self, at: float) -> None:
        await self._clock.sleep(at - self._clock.now())
        self.abort(CLOSE_UNAUTHENTICATED, EXPIRED_REASON)

    async def _drain_on(self, closing: asyncio.Event) -> None:
        await closing.wait()
        self.close(CLOSE_RESTART, "service restart")

    # ---- frames ------------------------------------------------------------

    async def _answer(self, frame: dict[str, Any]) -> None:
        await self._outbox.put(self._codec.encode(frame))

    async def _refuse(self, call_id: int | None, reason: Reason, message: str,
                      details: dict[str, Any] | None = None) -> None:
        await self._answer(error_frame(call_id, reason, message, details))

    async def _on_message(self, data: Wire) -> None:
        if self._outbox.closed:
            return  # closing: no new work
        if too_large(data, self._options.max_frame):
            await self._refuse(None, Reason.FRAME_TOO_LARGE,
                               f"the frame is larger than {self._options.max_frame} bytes")
            return
        allowed = self._rate is None or self._rate.take(self._clock.monotonic())
        if self._rate is not None and self._rate.abusive:
            log.info("WebSocket %s closed: it kept sending above its rate limit", self.id)
            self.abort(CLOSE_POLICY, "rate limit exceeded")
            return
        try:
            frame = parse_frame(self._codec.decode(data))
        except ClusterError as exc:
            await self._refuse(None, exc.reason, str(exc))
            return
        except FrameRefused as refused:
            await self._refuse(refused.call_id, refused.reason, str(refused))
            return
        if not allowed:
            await self._refuse(frame.id, Reason.RATE_LIMITED,
                               f"more than {self._options.rate:g} frames per second")
            return
        if frame.kind == "req":
            await self._request(frame)
        elif frame.kind == "ping":
            await self._answer({"t": "pong"})
        elif frame.kind == "cancel":
            assert frame.id is not None
            task = self._calls.pop(frame.id, None)
            if task is not None:
                task.cancel()
                await self._answer({"t": "end", "id": frame.id})
        elif frame.kind == "auth":
            await self._refuse(None, Reason.FRAME_INVALID, "the connection is authenticated")
        elif frame.kind == "ack" and self.on_ack is not None:
            try:
                await self.on_ack(frame.mids)
            except Exception:  # an ack that could not be applied: the mail expires
                log.warning("WebSocket %s: applying an ack failed", self.id, exc_info=True)

    async def _request(self, frame: Inbound) -> None:
        call_id = frame.id
        assert call_id is not None and frame.method is not None
        spec = self._methods.get(frame.method)
        if spec is None:
            await self._refuse(call_id, Reason.UNKNOWN_RPC,
                               f"unknown method {frame.method[:100]!r}")
            return
        if call_id in self._calls:
            await self._refuse(call_id, Reason.FRAME_INVALID, f"call {call_id} is in flight")
            return
        if len(self._calls) >= self._options.max_in_flight:
            await self._refuse(call_id, Reason.RATE_LIMITED,
                               f"more than {self._options.max_in_flight} calls in flight")
            return
        params: pydantic.BaseModel | None = None
        if spec.params is not None:
            try:
                params = spec.params.model_validate(frame.params)
            except pydantic.ValidationError as exc:
                message, fields = _validation_summary(exc)
                await self._refuse(call_id, Reason.PAYLOAD_INVALID, message, {"fields": fields})
                return
        elif frame.params not in (None, {}):
            await self._refuse(call_id, Reason.PAYLOAD_INVALID,
                               f"{spec.name} takes no params", {"fields": ["<root>"]})
            return
        assert self._group is not None
        self._calls[call_id] = self._group.create_task(self._run(spec, call_id, params))

    async def _run(self, spec: MethodSpec, call_id: int,
                   params: pydantic.BaseModel | None) -> None:
        fn = getattr(self._instance, spec.name)
        try:
            produced = fn() if spec.params is None else fn(params)
            if spec.streamed:
                await self._stream(spec, call_id, produced)
            else:
                result = self._dump(spec, await produced)
                await self._reply(call_id, self._encode({"t": "res", "id": call_id, "p": result}))
        except ClusterError as exc:
            await self._reply(call_id, self._codec.encode(error_frame(
                call_id, exc.reason, str(exc), plain_details(exc.details))))
        except Exception as exc:
            log.exception("WebSocket method %s raised", spec.name)
            await self._reply(call_id, self._codec.encode(error_frame(
                call_id, Reason.HANDLER_FAILED, f"{spec.name} raised {type(exc).__name__}")))
        finally:
            if self._calls.get(call_id) is asyncio.current_task():
                del self._calls[call_id]

    async def _stream(self, spec: MethodSpec, call_id: int, produced: Any) -> None:
        if inspect.isawaitable(produced):
            produced = await produced
        if not hasattr(produced, "__aiter__"):
            raise TypeError(f"{spec.name} returned {type(produced).__name__}, not an async "
                            "iterator")
        iterator: AsyncIterator[Any] = produced
        closer: contextlib.AbstractAsyncContextManager[Any] = (
            contextlib.aclosing(produced) if hasattr(produced, "aclose")
            else contextlib.nullcontext(iterator))
        async with closer:
            async for item in iterator:
                chunk = self._encode({"t": "chunk", "id": call_id, "p": self._dump(spec, item)})
                if not await self._reply(call_id, chunk):
                    return
        await self._reply(call_id, self._codec.encode({"t": "end", "id": call_id}))

    def _dump(self, spec: MethodSpec, value: Any) -> Any:
        if spec.result is None:
            return None
        if not isinstance(value, spec.result):
            value = spec.result.model_validate(value)
        return value.model_dump(mode="json")

    def _encode(self, frame: dict[str, Any]) -> Wire:
        """A reply frame as sent, or a ``frame_too_large`` error when it is too large."""
        data = self._codec.encode(frame)
        if too_large(data, self._options.max_frame):
            raise RealtimeError(f"the reply is larger than {self._options.max_frame} bytes",
                                reason=Reason.FRAME_TOO_LARGE)
        return data

    async def _reply(self, call_id: int, data: Wire) -> bool:
        """Queue a frame of a call still in flight (not cancelled); ``False`` otherwise."""
        if self._calls.get(call_id) is not asyncio.current_task():
            return False
        return await self._outbox.put(data)
