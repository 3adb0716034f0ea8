"""The Python client of a WebSocket contract: typed calls over a socket that comes back.

::

    async with await covey.realtime.connect(Chat, "wss://host/rpc", token=get_token) as chat:
        chat.on("notice", show)
        msg_id = await chat.send(SendMsg(text="hi"))        # -> MsgId, validated
        async for msg in chat.history(Since(after=0)): ...  # a streamed reply

- **Reconnects** at once after a drop, then with :class:`Backoff` (full jitter,
  ``cap``); a connection counts as open once the server answered its first
  ping (so the credential was accepted); ``on_reconnect`` runs after each
  reconnect (re-subscribe there).
- **Calls while disconnected** wait in a buffer (at most ``buffer``; beyond
  that ``rate_limited`` at once), each until ``call_timeout`` (then
  ``timeout``), and are sent once the socket is back. A call whose request
  was sent when the socket dropped fails with ``peer_unavailable`` (retryable):
  it may have run, so it is not resent silently.
- **Pushes** go to the handlers of their name, in order, each once: a push
  carrying an id (``mid``) seen among the last 10,000 is dropped. Each id is
  acknowledged (``ack`` frames, batched) once its handlers ran, a repeat again:
  the server deletes a stored message then, and hands the others over again
  on the next connect.
- **4401 / 4403** stop it: calls fail, and ``connect`` raises, with
  ``unauthenticated`` / ``forbidden``; except 4401 "token expired" with a
  token source (a callable), which reconnects with a fresh token. 1012, 1013,
  1006 and network errors reconnect.
- Pings every ``ping_interval``; no frame for two intervals is a dead socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

import aiohttp

from covey.core import ClusterError, RealtimeError, Reason
from covey.core.runtime import TaskSet, check_seconds, invalid_argument
from covey.realtime._backoff import Backoff
from covey.realtime._codec import CODECS, EXPIRED_REASON, MAX_ACK_MIDS, FrameCodec
from covey.realtime._contract import Contract, MethodSpec, check_contract, methods_of, pushes_of
from covey.realtime._ws_client_calls import Call, CallTable, StreamCall, params_of, result_of
from covey.realtime._ws_client_pushes import Pushes, PushHandler
from covey.realtime._ws_client_socket import (
    Auth,
    ClientSocket,
    Dropped,
    Stop,
    TokenSource,
    credential,
    open_socket,
    refused,
)

log = logging.getLogger("covey.realtime")

C = TypeVar("C", bound=Contract)
State = Literal["connecting", "open", "reconnecting", "closed"]


class Client(Generic[C]):
    """A connection to a WebSocket contract that reconnects (see the module docstring).

    Use :func:`connect`. Every method of the contract is a method of the client
    (``await client.send(msg)``; a streamed one returns a :class:`StreamCall`);
    :meth:`call` and :meth:`stream` name the method as a string.

    Attributes:
        contract: the contract.
        state: ``"connecting"`` (first attempt), ``"open"``, ``"reconnecting"``
            or ``"closed"``.
        reconnects: connections opened after the first.
    """

    def __init__(self, contract: type[C], url: str | Sequence[str], *,
                 token: TokenSource = None,
                 codec: str = "msgpack", cap: float = 5.0, ping_interval: float = 10.0,
                 call_timeout: float = 30.0, buffer: int = 1000,
                 on_reconnect: Callable[[], Any] | None = None,
                 on_push: Mapping[str, PushHandler] | None = None,
                 auth: Auth = "subprotocol", max_frame: int = 1024 * 1024) -> None:
        self.contract = check_contract(contract)
        if codec not in CODECS:
            raise invalid_argument("codec", f"{codec!r} is not 'msgpack' or 'json'")
        if auth not in ("subprotocol", "header", "ticket"):
            raise invalid_argument("auth", f"{auth!r} is not 'subprotocol', 'header' or 'ticket'")
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 0:
            raise invalid_argument("buffer", f"{buffer!r} is not an integer >= 0")
        self._urls = [url] if isinstance(url, str) else list(url)
        if not self._urls or not all(isinstance(u, str) for u in self._urls):
            raise invalid_argument("url", "a ws:// or wss:// URL, or a non-empty list of them")
        self.url = self._urls[0]
        self._codec: FrameCodec = CODECS[codec]
        self._token = token
        self._auth = auth
        self._backoff = Backoff(cap=check_seconds("cap", cap, positive=True))
        self._ping_interval = check_seconds("ping_interval", ping_interval, positive=True)
        self._call_timeout = check_seconds("call_timeout", call_timeout, positive=True)
        self._buffer = buffer
        self._on_reconnect = on_reconnect
        self._methods = methods_of(contract)
        self._pushes = Pushes(pushes_of(contract), buffer)
        for name, handler in (on_push or {}).items():
            self.on(name, handler)
        self.state: State = "connecting"
        self.reconnects = 0
        self._calls = CallTable(buffer=buffer, max_frame=max_frame)
        self._ws: ClientSocket | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks = TaskSet("covey-ws-client")
        self._first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._failure: RealtimeError | None = None
        self._last_received = 0.0

    # ---- public ----------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        methods = self.__dict__.get("_methods") or {}
        spec = methods.get(name)
        if spec is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        if spec.streamed:
            return lambda params=None: self.stream(name, params)
        return lambda params=None: self.call(name, params)

    @property
    def buffered(self) -> int:
        """Calls waiting for a connection."""
        return len(self._calls.buffered)

    @property
    def in_flight(self) -> int:
        """Calls sent and not answered yet."""
        return len(self._calls.pending)

    def on(self, push: str, handler: PushHandler) -> None:
        """Call ``handler(model)`` (sync or async) for each push ``push``, in order.

        Raises:
            RealtimeError: ``invalid_argument`` when the contract declares no such push.
        """
        self._pushes.on(push, handler)

    async def call(self, method: str, params: Any = None) -> Any:
        """Call ``method`` with ``params``; its result as the contract's model.

        Raises:
            RealtimeError: the server's error (its reason), ``timeout`` after
                ``call_timeout``, ``rate_limited`` when the buffer is full,
                ``peer_unavailable`` when the socket dropped with the call in
                flight, ``unauthenticated`` / ``forbidden`` once refused.
        """
        spec = self._spec(method, streamed=False)
        loop = asyncio.get_running_loop()
        call = Call(spec, params_of(spec, params), loop.time() + self._call_timeout,
                    future=loop.create_future())
        assert call.future is not None
        await self._submit(call)
        try:
            async with asyncio.timeout_at(call.deadline):
                payload = await call.future
        except TimeoutError:
            self._forget(call)
            raise RealtimeError(f"{method} got no reply within {self._call_timeout:g} s",
                                reason=Reason.TIMEOUT) from None
        except asyncio.CancelledError:
            self._forget(call)
            raise
        return result_of(spec, payload)

    def stream(self, method: str, params: Any = None) -> StreamCall[Any]:
        """The chunks of the streamed ``method`` (sent on first iteration)."""
        spec = self._spec(method, streamed=True)
        return StreamCall(spec, params_of(spec, params), capacity=max(1, self._buffer),
                          start=self._start_stream, cancel=self._cancel_stream)

    async def close(self) -> None:
        """Close the socket and stop; calls still waiting fail with ``shutting_down``."""
        if self.state == "closed" and self._tasks.closed:
            return
        self.state = "closed"
        await self._tasks.close()
        ws, self._ws = self._ws, None
        if ws is not None:
            acks = self._pushes.acks.take(MAX_ACK_MIDS)
            if acks and not ws.closed:  # what was handled: not to be handed over again
                await ws.send_quietly({"t": "ack", "mids": acks})
            await ws.close()
        if self._session is not None:
            await self._session.close()
        self._calls.fail_all(self._failure or RealtimeError("the client is closed",
                                                      reason=Reason.SHUTTING_DOWN))
        if not self._first.done():
            self._first.set_exception(RealtimeError("the client is closed",
                                                    reason=Reason.SHUTTING_DOWN))
            self._first.exception()  # retrieved: nobody may wait for it

    async def __aenter__(self) -> Client[C]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- calls -------------------------------------------------------------

    def _spec(self, method: str, *, streamed: bool) -> MethodSpec:
        spec = self._methods.get(method)
        if spec is None:
            raise RealtimeError(f"{self.contract.__name__} declares no method {method!r}",
                                reason=Reason.UNKNOWN_RPC)
        if spec.streamed != streamed:
            kind = "streamed: use stream()" if spec.streamed else "not streamed: use call()"
            raise RealtimeError(f"{method} is {kind}", reason=Reason.INVALID_ARGUMENT,
                                field="method")
        return spec

    async def _submit(self, call: Call) -> None:
        if self.state == "closed":
            raise self._failure or RealtimeError("the client is closed",
                                                 reason=Reason.SHUTTING_DOWN)
        if self.state == "open" and self._ws is not None:
            await self._calls.send(call, self._ws)
        else:
            self._calls.hold(call)

    def _forget(self, call: Call) -> None:
        call_id = self._calls.forget(call)
        if call_id is not None:
            self._send_soon({"t": "cancel", "id": call_id})

    def _send_soon(self, frame: dict[str, Any]) -> None:
        ws = self._ws
        if ws is not None and not ws.closed and not self._tasks.closed:
            self._tasks.spawn(ws.send_quietly(frame))

    async def _start_stream(self, stream: StreamCall[Any]) -> None:
        loop = asyncio.get_running_loop()
        call = Call(stream.spec, stream.params, loop.time() + self._call_timeout, stream=stream)
        stream.call = call
        await self._submit(call)
        if call.sent.is_set():
            return
        try:  # buffered: wait for the connection until the deadline
            async with asyncio.timeout_at(call.deadline):
                await call.sent.wait()
        except TimeoutError:
            self._forget(call)
            raise RealtimeError(f"{stream.spec.name} could not be sent within "
                                f"{self._call_timeout:g} s", reason=Reason.TIMEOUT) from None

    def _cancel_stream(self, stream: StreamCall[Any]) -> None:
        if stream.call is not None:
            self._forget(stream.call)

    # ---- the connection ------------------------------------------------------

    async def start(self) -> None:
        """Start connecting; return once the first connection is open.

        Raises:
            RealtimeError: ``unauthenticated`` / ``forbidden`` when the server
                refused the credential; ``peer_unavailable`` when no connection
                opened within ``call_timeout``.
        """
        self._session = aiohttp.ClientSession()
        self._tasks.spawn(self._supervise(), name="covey-ws-client")
        self._tasks.spawn(self._pushes.run(), name="covey-ws-pushes")
        try:
            async with asyncio.timeout(self._call_timeout):
                await asyncio.shield(self._first)
        except TimeoutError:
            await self.close()
            raise RealtimeError(f"could not connect to {self.url} within "
                                f"{self._call_timeout:g} s", reason=Reason.PEER_UNAVAILABLE) \
                from None
        except BaseException:
            await self.close()
            raise

    async def _supervise(self) -> None:
        while True:
            delay = self._backoff.next_delay()
            if delay:
                await asyncio.sleep(delay)
            try:
                ws = await self._open()
            except Stop as stop:
                await self._stop(stop.error)
                return
            except (aiohttp.ClientError, OSError, TimeoutError, Dropped) as exc:
                log.debug("WebSocket %s: connecting failed: %r", self.url, exc)
                self._next_url()
                continue
            try:
                await self._serve(ws)
            except Dropped as drop:
                if self.state == "closed":
                    return
                self.state = "reconnecting"
                self._next_url()  # the pod drains (1012) or died: try another first
                self._calls.fail_pending()
                refusal = refused(drop.code, drop.reason)
                if refusal is not None and not (drop.reason == EXPIRED_REASON
                                                and callable(self._token)):
                    await self._stop(refusal)
                    return
            finally:
                self._ws = None
                if not ws.closed:
                    await ws.close()

    def _next_url(self) -> None:
        """Try the next of the URLs given (another pod) on the next attempt."""
        if len(self._urls) > 1:
            self.url = self._urls[(self._urls.index(self.url) + 1) % len(self._urls)]

    async def _stop(self, error: RealtimeError) -> None:
        log.warning("WebSocket %s: %s; not reconnecting", self.url, error)
        self._failure = error
        self.state = "closed"
        self._calls.fail_all(error)
        if not self._first.done():
            self._first.set_exception(error)

    async def _open(self) -> ClientSocket:
        """A socket whose first ping was answered (the credential was accepted)."""
        assert self._session is not None
        try:
            token = await credential(self._token)
        except ClusterError as exc:  # the source gave something else than a string
            raise Stop(RealtimeError(str(exc), reason=exc.reason, **exc.details)) from None
        except Exception as exc:
            log.warning("WebSocket %s: the token source raised %r", self.url, exc)
            raise Dropped(None, "the token source failed") from None
        ws = await open_socket(self._session, self.url, codec=self._codec, token=token,
                               auth=self._auth)
        try:
            async with asyncio.timeout(self._call_timeout):
                while await self._receive(ws) != "pong":
                    pass  # pushes may come first (stored messages handed over on connect)
        except BaseException as exc:
            await ws.close()
            refusal = refused(exc.code, exc.reason) if isinstance(exc, Dropped) else None
            if refusal is not None:
                raise Stop(refusal) from None
            raise
        return ws

    async def _serve(self, ws: ClientSocket) -> None:
        """Use ``ws`` until it drops (raises :class:`Dropped`)."""
        self._backoff.reset()
        first = not self._first.done()
        if not first:
            self.reconnects += 1
        self._ws = ws
        await self._calls.flush(ws)
        self.state = "open"
        if first:
            self._first.set_result(None)
        elif self._on_reconnect is not None:
            self._tasks.spawn(self._reconnected(), name="covey-ws-on-reconnect")
        helpers = [self._tasks.spawn(self._ping(ws), name="covey-ws-client-ping"),
                   self._tasks.spawn(self._pushes.acks.send(ws),
                                     name="covey-ws-client-acks")]
        try:
            while True:
                await self._receive(ws)
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _reconnected(self) -> None:
        assert self._on_reconnect is not None
        try:
            result = self._on_reconnect()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("the on_reconnect hook of the WebSocket client raised")

    async def _ping(self, ws: ClientSocket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sent_at = loop.time()
            await ws.send_quietly({"t": "ping"})
            await asyncio.sleep(self._ping_interval)
            if self._last_received < sent_at and not self._pushes.busy:
                log.info("WebSocket %s: no frame for %.1f s; reconnecting", self.url,
                         self._ping_interval)
                await ws.close(code=1001)
                return

    async def _receive(self, ws: ClientSocket) -> str | None:
        """Read and handle one frame; its type (raises :class:`Dropped` at the end)."""
        frame = await ws.receive()
        self._last_received = asyncio.get_running_loop().time()
        if frame is None:
            return None
        kind = frame.get("t")
        call_id = frame.get("id")
        if kind == "ping":
            await ws.send_quietly({"t": "pong"})
        elif kind == "push":
            await self._pushes.received(frame)
        elif kind == "err" and call_id is None:
            log.warning("WebSocket %s: the server refused a frame: %s", self.url, frame.get("msg"))
        elif kind in ("res", "err", "end", "chunk"):
            self._calls.answered(kind, frame)
        return str(kind)


async def connect(contract: type[C], url: str | Sequence[str], *, token: TokenSource = None,
                  codec: Literal["msgpack", "json"] = "msgpack", cap: float = 5.0,
                  ping_interval: float = 10.0, call_timeout: float = 30.0, buffer: int = 1000,
                  on_reconnect: Callable[[], Any] | None = None,
                  on_push: Mapping[str, PushHandler] | None = None,
                  auth: Auth = "subprotocol", max_frame: int = 1024 * 1024) -> Client[C]:
    """Connect to the WebSocket contract served at ``url``; return once open.

    Args:
        contract: the contract class (the declaration; an implementation works too).
        url: ``ws://`` or ``wss://``; or several (the pods, when no load balancer
            is in front): a failed connection or a dropped one tries the next.
        token: the credential, or a function (sync or async) giving it, called
            before each connection.
        codec: ``"msgpack"`` (binary frames) or ``"json"``.
        cap: the largest delay between reconnect attempts, in seconds.
        ping_interval: seconds between pings; no frame for two is a dead socket.
        call_timeout: seconds a call may take, buffered time included; also the
            time ``connect`` waits for the first connection.
        buffer: calls that may wait for a connection (and chunks a stream, pushes
            the handlers, may fall behind).
        on_reconnect: called (sync or async) after each reconnect.
        on_push: handlers of pushes by name (see :meth:`Client.on`).
        auth: how the token is sent: the ``bearer.<token>`` subprotocol, an
            ``Authorization`` header, or a first-message ticket.
        max_frame: the largest request sent, in bytes (larger: ``frame_too_large``).

    Raises:
        RealtimeError: ``unauthenticated`` / ``forbidden``, or ``peer_unavailable``
            when no connection opened within ``call_timeout``.
    """
    client: Client[C] = Client(contract, url, token=token, codec=codec, cap=cap,
                               ping_interval=ping_interval, call_timeout=call_timeout,
                               buffer=buffer, on_reconnect=on_reconnect, on_push=on_push,
                               auth=auth, max_frame=max_frame)
    await client.start()
    return client
