"""One runner-to-runner TCP connection: framing, handshake, heartbeats, matching.

Every cross-runner call crosses :meth:`Connection.data_received` twice, so this is
an :class:`asyncio.Protocol` (no stream reader/writer), parses frames straight out
of a byte buffer, matches answers to waiting futures by request id, and spends no
task or timer on a request beyond the one timeout handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Protocol

from covey.core import Reason, RunnerAddress, SerializationError, TransportError, TransportOptions
from covey.sharding.transport._frames import (
    ERR,
    HEADER_SIZE,
    NOTE,
    PING,
    PONG,
    REQ,
    RES,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    IncomingFrameTooLarge,
    brief,
    err_frame,
    is_body,
)
from covey.sharding.transport._handshake import challenge, client_step, new_nonce, server_step
from covey.sharding.transport._protocol import (
    Body,
    error_from_frame,
    expire,
    logger,
    peer_unavailable,
)
from covey.sharding.transport._rejections import RejectionLog

# Until a client has proven the secret it may only send frames this small, so an
# unauthenticated connection cannot make us buffer max_frame_bytes.
_HANDSHAKE_FRAME_BYTES = 4096
_PING_FRAME = FrameEncoder(64).encode({"t": PING})
_PONG_FRAME = FrameEncoder(64).encode({"t": PONG})


class ConnectionOwner(Protocol):
    """What a connection needs from its transport (:class:`~._tcp.TcpTransport`).

    Its settings and this runner's address (sent in the handshake), and to hear
    of the connection's life: opened, lost (stop sending on it), closed (the
    socket is gone), and of each request (answer it on ``conn``) and notification.
    """

    options: TransportOptions
    encoder: FrameEncoder
    secret: bytes
    rejections: RejectionLog

    @property
    def address(self) -> RunnerAddress | None: ...
    def connection_opened(self, conn: Connection) -> None: ...
    def connection_lost(self, conn: Connection, *, established: bool) -> None: ...
    def connection_closed(self, conn: Connection) -> None: ...
    def request_received(self, conn: Connection, rid: int, body: Body) -> None: ...
    def note_received(self, conn: Connection, body: Body) -> None: ...


class Connection(asyncio.Protocol):
    """One TCP connection between two runners, in either direction.

    Outgoing connections (we dialled ``peer``) send requests and match answers
    by id; incoming ones answer. Both answer pings and ping back, so each side
    notices a silent peer on its own.
    """

    def __init__(self, owner: ConnectionOwner, loop: asyncio.AbstractEventLoop, *,
                 peer: RunnerAddress | None, outgoing: bool) -> None:
        self._owner = owner
        self._loop = loop
        self._options = owner.options
        self.peer = peer  # dialled address, or the one the client advertised
        self.outgoing = outgoing
        self._transport: asyncio.Transport | None = None
        self._remote = "?"
        self._host = "?"  # the remote IP alone: refusals are rate-limited per host
        self._decoder = FrameDecoder(min(_HANDSHAKE_FRAME_BYTES, owner.options.max_frame_bytes))
        self._ready = False
        self.is_closed = False
        # The peer's own frame limit, learnt in the handshake: frames it would
        # refuse fail here with frame_too_large instead of costing the connection.
        self.peer_limit = owner.options.max_frame_bytes
        self._nonce = b""
        self._pending: dict[int, tuple[asyncio.Future[Body], int]] = {}
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._outbox: list[bytes] | None = None  # frames of this loop turn, not sent yet
        self._last_rx = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._error: TransportError | None = None  # why we closed, for pending callers
        self.welcomed: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    def describe(self) -> str:
        """The peer for log lines: advertised address and remote socket address."""
        return f"{self.peer} ({self._remote})" if self.peer is not None else self._remote

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peername = transport.get_extra_info("peername")
        if peername:
            self._remote = f"{peername[0]}:{peername[1]}"
            self._host = str(peername[0])
        _set_nodelay(transport)
        self._owner.connection_opened(self)
        if not self.outgoing:
            self._nonce = new_nonce()
            transport.write(self._owner.encoder.encode(challenge(self._nonce)))
        self._timer = self._loop.call_later(self._options.connect_timeout,
                                            self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        try:
            frames = self._decoder.feed(data)
        except IncomingFrameTooLarge as exc:
            self._refuse_oversized(exc)
            return
        except FrameError as exc:
            self._reject("malformed", f"protocol error: {exc}")
            return
        pending = self._pending
        # Fields are checked before use: a wrong-shaped frame must not reach a
        # handler, nor raise in here (asyncio would drop the connection silently).
        for frame in frames:
            if self.is_closed:
                return
            kind = frame["t"]
            if not self._ready:
                self._handshake(kind, frame)
            elif kind == RES:
                rid, body = frame.get("i"), frame.get("b")
                if type(rid) is not int or not is_body(body):
                    self._reject("malformed", "res frame without an int id and a map body")
                    return
                entry = pending.pop(rid, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(body)
            elif kind == REQ:
                rid, body = frame.get("i"), frame.get("b")
                if type(rid) is not int:
                    self._reject("malformed", "req frame without an int id")
                    return
                if is_body(body):
                    self._owner.request_received(self, rid, body)
                else:
                    self._refuse_request(rid, body)
            elif kind == ERR:
                self._on_error_frame(frame)
            elif kind == NOTE:
                body = frame.get("b")
                if not is_body(body):
                    self._reject("malformed", "note frame without a map body")
                    return
                self._owner.note_received(self, body)
            elif kind == PING:
                self._write(_PONG_FRAME)
            elif kind != PONG:
                self._reject("malformed", f"unexpected {brief(kind)} frame")

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut(peer_unavailable(self.peer, "connection lost" + (f": {exc}" if exc else "")))
        self._transport = None
        if not self.lost.done():
            self.lost.set_result(None)
        self._owner.connection_closed(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- sending ----------------------------------------------------------------

    async def request(self, rid: int, data: bytes, limit: float) -> Body:
        """Send an encoded ``req`` frame with id ``rid`` and wait for its answer."""
        if self._paused:
            await self._drain()
        if self.is_closed:
            raise self._error or peer_unavailable(self.peer, "connection closed")
        self.check_size(data)
        future: asyncio.Future[Body] = self._loop.create_future()
        self._pending[rid] = (future, len(data))
        self._write(data)
        # call_later + a bare future is much cheaper than asyncio.timeout() here.
        handle = self._loop.call_later(limit, expire, future, self.peer, limit)
        try:
            return await future
        finally:
            handle.cancel()
            self._pending.pop(rid, None)

    async def send(self, data: bytes) -> None:
        """Write one encoded frame, waiting first if the socket buffer is full."""
        if self._paused:
            await self._drain()
        if self.is_closed:
            raise self._error or peer_unavailable(self.peer, "connection closed")
        self.check_size(data)
        self._write(data)

    def check_size(self, data: bytes) -> None:
        """Refuse an encoded frame bigger than the peer accepts (``frame_too_large``)."""
        size = len(data) - HEADER_SIZE
        if size > self.peer_limit:
            raise TransportError(
                f"frame of {size} bytes exceeds runner {self.peer}'s max_frame_bytes="
                f"{self.peer_limit}", reason=Reason.FRAME_TOO_LARGE, size=size,
                limit=self.peer_limit, peer=str(self.peer))

    async def _drain(self) -> None:
        while self._paused and not self.is_closed:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _write(self, data: bytes) -> None:
        # Frames written in one turn of the event loop leave in one send: a group
        # commit that completes many runs answers them all with one syscall.
        if self._transport is None or self.is_closed:
            return
        if self._outbox is None:
            self._outbox = [data]
            self._loop.call_soon(self._flush_outbox)
        else:
            self._outbox.append(data)

    def _flush_outbox(self) -> None:
        out, self._outbox = self._outbox, None
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def abort(self, error: TransportError | None) -> None:
        """Close at once, failing every pending request with ``error``."""
        self._shut(error or peer_unavailable(self.peer, "connection aborted"))
        if self._transport is not None:
            self._transport.abort()

    # -- handshake and heartbeats -------------------------------------------------

    def _handshake(self, kind: str, frame: dict[str, Any]) -> None:
        owner, limit = self._owner, self._options.max_frame_bytes
        step = client_step(kind, frame, secret=owner.secret, max_frame_bytes=limit,
                           address=owner.address) if self.outgoing else server_step(
            kind, frame, secret=owner.secret, nonce=self._nonce, max_frame_bytes=limit)
        if step.malformed is not None:
            self._reject("malformed", step.malformed)
            return
        if step.denied:  # fails the dialler waiting for the welcome, too
            self._close_gracefully(TransportError(
                f"runner {self.peer} refused our cluster secret",
                reason=Reason.AUTH_FAILED, peer=str(self.peer)))
            return
        if step.wrong_secret:
            owner.rejections.record(self._host, "auth_failed", "refused runner "
                                    f"connection from {self._remote}: wrong cluster secret")
        self.peer = step.peer or self.peer
        self.peer_limit = step.peer_limit or self.peer_limit
        if step.reply is not None:
            self._write(owner.encoder.encode(step.reply))
        if step.wrong_secret:
            self._close_gracefully(None)
        elif step.ready:
            self._become_ready()
            if self.outgoing and not self.welcomed.done():
                self.welcomed.set_result(None)

    def _become_ready(self) -> None:
        self._ready = True
        self._decoder.max_frame_bytes = self._options.max_frame_bytes
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._options.heartbeat_interval, self._heartbeat)

    def _handshake_expired(self) -> None:
        self._timer = None
        if not self._ready and not self.is_closed:
            self._reject("handshake_timeout",
                         f"no handshake within {self._options.connect_timeout}s")

    def _heartbeat(self) -> None:
        # A timer, not a task: one per connection, cancelled when it closes, and
        # it must not cost anything on the request path. Ping every interval, busy
        # or not, so a healthy peer is never silent for longer than interval + RTT.
        self._timer = None
        if self.is_closed:
            return
        idle = self._loop.time() - self._last_rx
        if idle >= self._options.heartbeat_timeout:
            self._drop(f"no frame for {idle:.1f}s (heartbeat_timeout="
                       f"{self._options.heartbeat_timeout}s)")
            return
        self._write(_PING_FRAME)
        self._timer = self._loop.call_later(self._options.heartbeat_interval, self._heartbeat)

    # -- failures ---------------------------------------------------------------

    def _on_error_frame(self, frame: dict[str, Any]) -> None:
        rid = frame.get("i")
        if rid is not None and type(rid) is not int:
            self._reject("malformed", "err frame with an id that is not an int")
            return
        error = error_from_frame(self.peer, frame.get("r"), frame.get("m"), frame.get("x"))
        if not self.outgoing:
            # We send no requests on a connection we accepted (its peer may be
            # client-only, without an address): the peer reports a frame of ours
            # it refused, e.g. a reply over its limit. Worth a log line, no more.
            self._owner.rejections.record(
                self._host, "peer_error", f"runner {self.describe()} reported an error: "
                f"{error.reason.value}: {brief(str(error))}", counted=False)
            return
        if rid is not None:
            entry = self._pending.pop(rid, None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(error)
            return
        # No id: the peer could not read a frame's header past its limit and is
        # closing. Requests larger than its limit were the culprit.
        limit = error.details.get("limit")
        if error.reason is Reason.FRAME_TOO_LARGE and isinstance(limit, int):
            for rid_, (future, size) in list(self._pending.items()):
                if size - HEADER_SIZE > limit and not future.done():
                    del self._pending[rid_]
                    future.set_exception(error)

    def _refuse_oversized(self, exc: IncomingFrameTooLarge) -> None:
        # Before the handshake a big frame is garbage (HTTP reads as a huge length).
        self._owner.rejections.record(
            self._host, "frame_too_large" if self._ready else "malformed",
            f"closing runner connection from {self.describe()}: {exc}")
        if self._ready:
            self._write(self._owner.encoder.encode(err_frame(None, TransportError(
                str(exc), reason=Reason.FRAME_TOO_LARGE, size=exc.size, limit=exc.limit))))
        self._close_gracefully(None)

    def _refuse_request(self, rid: int, body: Any) -> None:
        """Answer a request whose body is not a map with a typed error; keep the connection."""
        why = f"a request body must be a map with text keys, not {brief(body)}"
        self._owner.rejections.record(
            self._host, "malformed", f"refused a request from runner {self.describe()}: {why}")
        self._write(self._owner.encoder.encode(
            err_frame(rid, SerializationError(why, reason=Reason.PAYLOAD_INVALID))))

    def _reject(self, reason: str, why: str) -> None:
        """Drop a connection that broke the protocol: counted, logged rate-limited."""
        self._owner.rejections.record(
            self._host, reason, f"dropping runner connection {self.describe()}: {why}")
        self.abort(peer_unavailable(self.peer, why))

    def _drop(self, why: str) -> None:
        logger.warning("dropping runner connection %s: %s", self.describe(), why)
        self.abort(peer_unavailable(self.peer, why))

    def _close_gracefully(self, error: TransportError | None) -> None:
        """Close after flushing what is already written (a final error frame)."""
        self._flush_outbox()
        self._shut(error or peer_unavailable(self.peer, "connection closed"))
        if self._transport is not None:
            self._transport.close()

    def _shut(self, error: TransportError) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self._error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for future, _size in pending.values():
            if not future.done():
                future.set_exception(error)
        if not self.welcomed.done():
            self.welcomed.set_exception(error)
            self.welcomed.exception()  # nobody may be waiting (incoming side); no log
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters = []
        # Tell the owner now, not when the loop gets round to connection_lost, so
        # no new request picks this connection and on_peer_lost fires at once.
        self._owner.connection_lost(self, established=self._ready)


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle: small request/response frames must not wait for ACKs."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # already closed: connection_lost follows
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
