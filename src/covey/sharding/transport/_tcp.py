"""The runner-to-runner transport over TCP (optionally TLS).

One persistent connection per peer carries every request to it, multiplexed by
request id; answers may come back in any order. A connection starts with a
challenge/response handshake proving the client knows the cluster secret, then
both sides ping each other so a silent peer is noticed.

This module holds the per-peer bookkeeping (connect once, back off, report lost
peers, run handlers as tracked tasks); the per-frame work lives in
:mod:`covey.sharding.transport._connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from covey.core import Clock, ConfigError, Reason, RunnerAddress, TransportError, TransportOptions
from covey.core.runtime import TaskSet
from covey.sharding.transport._connection import Connection
from covey.sharding.transport._frames import NOTE, REQ, RES, FrameEncoder, err_frame
from covey.sharding.transport._protocol import (
    Body,
    NotifyHandler,
    PeerLostCallback,
    RequestHandler,
    TransportTasks,
    call_lost_callbacks,
    logger,
    peer_unavailable,
    remote_failure,
    timed_out,
)
from covey.sharding.transport._rejections import RejectionLog

_BACKOFF_BASE = 0.05  # first wait after a failed connect; doubles per failure


@dataclass(eq=False, slots=True)
class _PeerState:
    """Connect bookkeeping for one peer (the live connection is in ``_ready``)."""

    connecting: asyncio.Future[Connection] | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_error: TransportError | None = None


class TcpTransport:
    """A :class:`~covey.sharding.transport._protocol.RunnerTransport` over TCP or TLS.

    Args:
        host: the interface to listen on (``0.0.0.0`` for every interface).
        port: the port to listen on; 0 picks a free one.
        secret: the shared cluster secret; None means the empty secret (both
            sides must agree).
        options: frame limit, heartbeats, timeouts and TLS files (PEM paths; all
            three of ``tls_cert``, ``tls_key`` and ``tls_ca`` enable mutual TLS).
        advertise_host: the host peers should dial, when ``host`` is a wildcard
            or not reachable from them (the pod IP in Kubernetes).
        clock: the time source for summarising refused connections in the log.

    Raises:
        ConfigError: TLS is half configured or its files cannot be loaded.
    """

    def __init__(self, host: str, port: int, *, secret: str | None,
                 options: TransportOptions, advertise_host: str | None = None,
                 clock: Clock | None = None) -> None:
        self._host = host
        self._port = port
        self.secret = (secret or "").encode()
        self.options = options
        self._advertise_host = advertise_host
        self._server_ssl, self._client_ssl = _ssl_contexts(options)
        # One packer for the whole transport: packing is synchronous and the loop
        # is single-threaded, so frames can be encoded before a connection exists
        # (an oversized body fails without dialing anyone).
        self.encoder = FrameEncoder(options.max_frame_bytes)
        self._next_id = 0
        self._server: asyncio.Server | None = None
        self._address: RunnerAddress | None = None
        self.on_request: RequestHandler | None = None
        self.on_notify: NotifyHandler | None = None
        self._ready: dict[RunnerAddress, Connection] = {}
        self._peers: dict[RunnerAddress, _PeerState] = {}
        self._connections: set[Connection] = set()  # every open one, both directions
        self._tasks = TransportTasks("covey-transport")
        self._lost_callbacks: list[PeerLostCallback] = []
        # Refused connections: all counted, logged once per host and reason, then
        # summarised, so a port scan or a wrong secret in a loop cannot flood the log.
        self.rejections = RejectionLog(clock)
        self.closed = False

    @property
    def address(self) -> RunnerAddress | None:
        """The address peers use to reach this runner; None until started."""
        return self._address

    @property
    def open_connections(self) -> int:
        """Connections currently open, in both directions (for metrics and tests)."""
        return len(self._connections)

    def on_peer_lost(self, callback: PeerLostCallback) -> None:
        """Call ``callback(peer)`` when an established outgoing connection drops."""
        self._lost_callbacks.append(callback)

    def use_tasks(self, tasks: TaskSet) -> None:
        """Spawn connection and handler tasks into ``tasks`` from now on."""
        self._tasks.use(tasks)

    async def start(self, on_request: RequestHandler, on_notify: NotifyHandler) -> RunnerAddress:
        """Listen and return the address peers should use.

        Raises:
            ConfigError: the host/port cannot be bound.
        """
        if self._server is not None or self.closed:
            raise ConfigError("transport already started or closed", setting="runner_port")
        self.on_request, self.on_notify = on_request, on_notify
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: Connection(self, loop, peer=None, outgoing=False),
                self._host, self._port, ssl=self._server_ssl, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self._host}:{self._port}: {exc}",
                              setting="runner_port") from exc
        port = self._server.sockets[0].getsockname()[1]
        self._address = RunnerAddress(self._advertise_host or self._host, port)
        return self._address

    async def close(self) -> None:
        """Stop listening, close every connection and fail what is pending."""
        if self.closed:
            return
        self.closed = True
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.abort(peer_unavailable(conn.peer, "transport closed"))
        await self._tasks.close()
        # Wait until the loop has really closed each socket, so nothing is left
        # for the garbage collector (which would warn about unclosed sockets).
        waiters = [conn.lost for conn in connections if not conn.lost.done()]
        if waiters:
            await asyncio.wait(waiters, timeout=self.options.connect_timeout)
        if self._server is not None:
            await self._server.wait_closed()
        self._ready.clear()
        self.rejections.close()

    # The contract takes a per-call timeout (ASYNC109): the connection enforces it
    # with one timer handle, far cheaper than asyncio.timeout() on the hot path.
    async def request(self, peer: RunnerAddress, body: Body, *,
                      timeout: float) -> Body:
        """Send a request to ``peer`` and wait at most ``timeout`` seconds for its answer.

        Raises:
            TransportError: peer_unavailable, timeout, frame_too_large,
                auth_failed or remote_failure.
            SerializationError: the body cannot be encoded.
        """
        self._next_id = rid = self._next_id + 1
        data = self.encoder.encode({"t": REQ, "i": rid, "b": body})
        conn = self._ready.get(peer)
        if conn is None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            conn = await self._connection(peer, limit=timeout)
            timeout = max(0.0, timeout - (loop.time() - start))
        return await conn.request(rid, data, timeout)

    async def notify(self, peer: RunnerAddress, body: Body) -> None:
        """Send a notification to ``peer``; returns once it is handed to the socket.

        Raises:
            TransportError: the peer cannot be reached or the frame is too large.
            SerializationError: the body cannot be encoded.
        """
        data = self.encoder.encode({"t": NOTE, "b": body})
        conn = self._ready.get(peer)
        if conn is None:
            conn = await self._connection(peer, limit=self.options.connect_timeout)
        await conn.send(data)

    # -- connecting -----------------------------------------------------------

    async def _connection(self, peer: RunnerAddress, *, limit: float) -> Connection:
        if self.closed:
            raise peer_unavailable(peer, "transport closed")
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState()
        connecting = state.connecting
        if connecting is None:
            conn = self._ready.get(peer)
            if conn is not None:
                return conn
            loop = asyncio.get_running_loop()
            wait = state.retry_at - loop.time()
            if wait > 0 and state.last_error is not None:
                # Fail fast instead of hammering a peer that just refused us.
                raise TransportError(
                    f"{state.last_error} (not retrying for another {wait:.2f}s)",
                    reason=state.last_error.reason, peer=str(peer), retry_in=wait)
            # The callers share one connect, which reports to them through a
            # future: its failure is theirs to handle, not a crash of the task.
            outcome: asyncio.Future[Connection] = loop.create_future()
            connecting = state.connecting = outcome
            task = self._tasks.spawn(self._connect(peer, state, outcome))
            # cancelled by close(), maybe before it even started
            task.add_done_callback(
                lambda _: _fail(outcome, peer_unavailable(peer, "transport closed")))
        try:
            async with asyncio.timeout(limit):
                # Shielded: one caller giving up must not abort the connect the
                # other callers share.
                return await asyncio.shield(connecting)
        except TimeoutError:
            raise timed_out(peer, limit) from None

    async def _connect(self, peer: RunnerAddress, state: _PeerState,
                       outcome: asyncio.Future[Connection]) -> None:
        """Dial ``peer`` and hand the connection (or the failure) to ``outcome``."""
        try:
            conn = await self._dial(peer, state)
        except Exception as exc:
            _fail(outcome, exc)
        else:
            if not outcome.done():
                outcome.set_result(conn)

    async def _dial(self, peer: RunnerAddress, state: _PeerState) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            conn = await self._open(peer)
            if conn.is_closed:  # lost between the welcome and now: never install it
                raise peer_unavailable(peer, "connection lost right after the handshake")
        except TransportError as exc:
            state.failures += 1
            backoff = _BACKOFF_BASE * 2 ** min(state.failures - 1, 16)
            state.retry_at = loop.time() + min(backoff, self.options.reconnect_backoff_max)
            state.last_error = exc
            raise
        finally:
            state.connecting = None
        state.failures = 0
        state.last_error = None
        self._ready[peer] = conn
        return conn

    async def _open(self, peer: RunnerAddress) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(self, loop, peer=peer, outgoing=True)
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await loop.create_connection(
                    lambda: conn, peer.host, peer.port, ssl=self._client_ssl,
                    server_hostname=peer.host if self._client_ssl is not None else None)
                await conn.welcomed
        except TimeoutError:
            conn.abort(None)
            raise peer_unavailable(
                peer, f"no handshake within {self.options.connect_timeout}s") from None
        except ssl.SSLError as exc:
            conn.abort(None)
            raise TransportError(f"TLS handshake with runner {peer} failed: {exc}",
                                 reason=Reason.AUTH_FAILED, peer=str(peer)) from None
        except OSError as exc:
            conn.abort(None)
            raise peer_unavailable(peer, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            conn.abort(None)
            raise
        return conn

    # -- called by connections ------------------------------------------------

    def request_received(self, conn: Connection, rid: int, body: Body) -> None:
        """Answer request ``rid`` in a task of its own (see :meth:`answer`)."""
        self._tasks.spawn(self.answer(conn, rid, body))

    def note_received(self, conn: Connection, body: Body) -> None:
        """Run the notify handler for ``body`` in a task of its own."""
        self._tasks.spawn(self.deliver(conn, body))

    def connection_opened(self, conn: Connection) -> None:
        """Track a new connection (so close() can reach it)."""
        self._connections.add(conn)
        if self.closed:
            conn.abort(None)

    def connection_closed(self, conn: Connection) -> None:
        """The socket under ``conn`` is closed: stop tracking it."""
        self._connections.discard(conn)

    def connection_lost(self, conn: Connection, *, established: bool) -> None:
        """Stop using a failed connection; report its peer lost if it was our live link."""
        peer = conn.peer
        if not conn.outgoing or peer is None or self._ready.get(peer) is not conn:
            return
        del self._ready[peer]
        if established and not self.closed:
            call_lost_callbacks(self._lost_callbacks, peer)

    async def answer(self, conn: Connection, rid: int, body: Body) -> None:
        """Run the request handler for one incoming request and send its outcome."""
        try:
            if self.on_request is None:
                raise RuntimeError("this transport does not serve requests")
            result = await self.on_request(conn.peer, body)
            data = self.encoder.encode({"t": RES, "i": rid, "b": result})
            conn.check_size(data)
        except Exception as exc:
            logger.warning("request handler failed for a request from %s: %s: %s",
                           conn.describe(), type(exc).__name__, exc,
                           exc_info=not isinstance(exc, TransportError))
            data = self.encoder.encode(err_frame(rid, remote_failure(exc)))
        if not conn.is_closed:
            # If the caller is gone, its side has already failed the request.
            with contextlib.suppress(TransportError):
                await conn.send(data)

    async def deliver(self, conn: Connection, body: Body) -> None:
        """Run the notify handler for one incoming notification."""
        try:
            if self.on_notify is not None:
                await self.on_notify(conn.peer, body)
        except Exception:
            logger.exception("notify handler failed for a notification from %s",
                             conn.describe())


def _fail(outcome: asyncio.Future[Connection], error: BaseException) -> None:
    if not outcome.done():
        outcome.set_exception(error)
        outcome.exception()  # retrieved: every caller may have given up already


def _ssl_contexts(options: TransportOptions) -> tuple[ssl.SSLContext | None,
                                                      ssl.SSLContext | None]:
    files = (options.tls_cert, options.tls_key, options.tls_ca)
    if not any(files):
        return None, None
    if not all(files):
        raise ConfigError("TLS needs tls_cert, tls_key and tls_ca together",
                          setting="transport.tls")
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for context in (server, client):
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(options.tls_cert, options.tls_key)
            context.load_verify_locations(options.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}", setting="transport.tls") from exc
    # Peers are dialled by pod IP, which certificates rarely name; trust comes
    # from the cluster CA verifying both sides (and the cluster secret on top).
    client.check_hostname = False
    return server, client

