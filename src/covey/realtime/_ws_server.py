"""``websocket_app``: a contract served over WebSocket, as a pure ASGI app.

Mount it at any path of any ASGI framework (or run it alone)::

    app.mount("/rpc", covey.realtime.websocket_app(ChatImpl, authenticate=check_token))

The wire (frames, codecs, close codes) is described in ``_codec.py``; the
authentication in ``_ws_auth.py``; the per-connection bounds in
``_ws_limits.py``. A connection goes::

    websocket.connect ─ codec from the subprotocol (echoed) or ?codec=
      ─ token from the Authorization header or the bearer.<token> subprotocol:
        authenticate before accepting; else accept and wait for the auth frame
      ─ refused: close 4401 / 4403 (1011 when the hook failed)
      ─ on_connect(connection); serve frames; on_disconnect(connection)
      ─ closing set (the pod drains): close 1012, clients reconnect elsewhere

Plain HTTP requests get 426 Upgrade Required.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from covey.core import Clock, SystemClock
from covey.core.runtime import answer_lifespan
from covey.realtime._codec import (
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_UNAUTHENTICATED,
    EXPIRED_REASON,
    FrameCodec,
    negotiate,
)
from covey.realtime._contract import Contract, check_contract
from covey.realtime._handshake import handshake_of
from covey.realtime._types import Handshake, Principal
from covey.realtime._ws_asgi import Receive, Scope, Send, answer_http
from covey.realtime._ws_auth import (
    Authenticate,
    Refusal,
    authenticate_with,
    read_ticket,
    with_token,
)
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_limits import MiB, WebSocketOptions

log = logging.getLogger("covey.realtime")

Hook = Callable[[Connection], Awaitable[None]]


class WebSocketApp:
    """The ASGI app :func:`websocket_app` returns.

    Attributes:
        contract: the implementation it serves.
        options: its limits and timeouts.
    """

    def __init__(self, impl: type[Contract], *, authenticate: Authenticate | None,
                 on_connect: Hook | None, on_disconnect: Hook | None,
                 options: WebSocketOptions, closing: asyncio.Event | None,
                 clock: Clock) -> None:
        self.contract = check_contract(impl)
        self.options = options
        self._authenticate = authenticate
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._closing = closing
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            # OSError: the client went away during the handshake (uvicorn's ClientDisconnected)
            with contextlib.suppress(OSError):
                await self._serve(scope, receive, send)
        elif kind == "http":
            await answer_http(send, 426, b"this endpoint speaks WebSocket (covey.v1)\n",
                              [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")])
        elif kind == "lifespan":
            await answer_lifespan(receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        offered = [str(p) for p in scope.get("subprotocols") or ()]
        handshake = handshake_of(scope)
        negotiated = negotiate(offered, handshake.query.get("codec"))
        if negotiated is None:
            await self._refuse(send, None, Refusal(CLOSE_POLICY, "unknown codec"))
            return
        codec, subprotocol = negotiated
        if self._closing is not None and self._closing.is_set():
            await self._refuse(send, subprotocol, Refusal(CLOSE_RESTART, "service restart"))
            return
        token = handshake.token  # Authorization: Bearer, else the bearer.<token> subprotocol
        found: Principal | Refusal | None = Principal() if self._authenticate is None else None
        if found is None and token is not None:
            found = await self._check(handshake)  # before accepting: no frame is read yet
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        if found is None:  # a ticket: the first frame
            ticket = await read_ticket(receive, codec, self.options)
            if ticket is None:
                return
            if isinstance(ticket, Refusal):
                found = ticket
            else:
                handshake = with_token(handshake, ticket)
                found = await self._check(handshake)
        if isinstance(found, Refusal):
            await send({"type": "websocket.close", "code": found.code, "reason": found.reason})
            return
        await self._run(found, handshake, codec, receive, send)

    async def _check(self, handshake: Handshake) -> Principal | Refusal:
        assert self._authenticate is not None
        found = await authenticate_with(self._authenticate, handshake,
                                        self.options.auth_timeout)
        if (isinstance(found, Principal) and found.expires_at is not None
                and found.expires_at <= self._clock.now()):
            return Refusal(CLOSE_UNAUTHENTICATED, EXPIRED_REASON)
        return found

    async def _refuse(self, send: Send, subprotocol: str | None, refusal: Refusal) -> None:
        # accept first: a close before the accept is an HTTP 403 the browser cannot read
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        await send({"type": "websocket.close", "code": refusal.code, "reason": refusal.reason})

    async def _run(self, principal: Principal, handshake: Handshake, codec: FrameCodec,
                   receive: Receive, send: Send) -> None:
        connection = Connection(self.contract, codec=codec, principal=principal,
                                handshake=handshake, options=self.options, clock=self._clock)
        instance = self.contract()
        instance.connection = connection
        try:
            await connection.serve(instance, receive, send, on_connect=self._on_connect,
                                   closing=self._closing)
        finally:
            if self._on_disconnect is not None:
                try:
                    await self._on_disconnect(connection)
                except Exception:
                    log.exception("the WebSocket on_disconnect hook raised")


def websocket_app(impl: type[Contract], *, authenticate: Authenticate | None = None,
                  on_connect: Hook | None = None, on_disconnect: Hook | None = None,
                  max_frame: int = MiB, rate: float | None = 100.0, max_in_flight: int = 64,
                  auth_timeout: float = 10.0, ping_interval: float = 20.0,
                  send_timeout: float = 5.0, closing: asyncio.Event | None = None,
                  queue_frames: int = 1000, queue_bytes: int = MiB,
                  clock: Clock | None = None) -> WebSocketApp:
    """An ASGI app serving the contract implementation ``impl`` over WebSocket.

    Args:
        impl: a subclass of a :class:`Contract` that implements its methods; one
            instance per connection (``self.connection`` set).
        authenticate: ``authenticate(handshake)`` returns the connection's
            :class:`Principal` (or an awaitable of it); ``None`` or a
            ``RealtimeError`` closes it (see ``_ws_auth.py``). Without it every
            connection is an anonymous ``Principal()``.
        on_connect: awaited with the :class:`Connection` once it is
            authenticated, before its first frame is read (attach presence here).
        on_disconnect: awaited once it ended.
        max_frame: the largest frame taken or sent, in bytes.
        rate: frames per second per connection (bursts of twice that); ``None``:
            unlimited.
        max_in_flight: calls per connection running at once.
        auth_timeout: seconds for the ticket frame and for the hook.
        ping_interval: seconds without a frame sent before a ``ping`` frame.
        send_timeout: seconds a frame may take to send before the client is
            released.
        closing: set when the pod drains: every connection closes with 1012.
        queue_frames: frames the send queue of a connection holds.
        queue_bytes: bytes it holds.
        clock: time for the expiry of principals and the pings.

    Raises:
        RealtimeError: ``invalid_argument`` for a class that is not a contract.
        ClusterError: ``invalid_argument`` for an option out of range.
    """
    options = WebSocketOptions(max_frame=max_frame, rate=rate, max_in_flight=max_in_flight,
                               auth_timeout=auth_timeout, ping_interval=ping_interval,
                               send_timeout=send_timeout, queue_frames=queue_frames,
                               queue_bytes=queue_bytes)
    return WebSocketApp(impl, authenticate=authenticate, on_connect=on_connect,
                        on_disconnect=on_disconnect, options=options, closing=closing,
                        clock=clock or SystemClock())
