"""An in-process transport: many runners in one event loop, no sockets.

:class:`LocalTransport` behaves like :class:`~covey.sharding.transport._tcp.TcpTransport`
where a test would notice: bodies are round-tripped through the same msgpack frame
encoding (an unencodable body fails the same way), the frame-size limit applies in
both directions, handlers run as their own tasks, a handler that raises becomes
``remote_failure``, and :meth:`LocalNetwork.kill` makes a runner unreachable the
way a crashed pod is: its pending calls fail with ``peer_unavailable`` and peers
that talked to it get ``on_peer_lost``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from covey.core import ConfigError, Reason, RunnerAddress, TransportError, TransportOptions
from covey.core.runtime import TaskSet
from covey.sharding._wire_errors import error_fields
from covey.sharding.transport._frames import (
    HEADER_SIZE,
    NOTE,
    REQ,
    RES,
    FrameEncoder,
    decode_payload,
)
from covey.sharding.transport._protocol import (
    Body,
    NotifyHandler,
    PeerLostCallback,
    RequestHandler,
    TransportTasks,
    call_lost_callbacks,
    error_from_frame,
    expire,
    logger,
    peer_unavailable,
    remote_failure,
)


class LocalNetwork:
    """The wire between :class:`LocalTransport` instances of one event loop.

    Example::

        net = LocalNetwork()
        a = LocalTransport(net, RunnerAddress("local", 1))
        b = LocalTransport(net, RunnerAddress("local", 2))
        await b.start(on_request, on_notify)
        await a.request(b.address, {"ping": 1}, timeout=1.0)
        net.kill(b.address)          # now: peer_unavailable, a's on_peer_lost fires
    """

    def __init__(self) -> None:
        self._members: list[LocalTransport] = []  # every transport, started or not
        self._listening: dict[RunnerAddress, LocalTransport] = {}
        self._down: set[RunnerAddress] = set()

    def kill(self, address: RunnerAddress) -> None:
        """Make ``address`` unreachable until :meth:`revive`.

        Requests to and from it that are waiting fail with ``peer_unavailable``;
        every runner that had talked to it gets its ``on_peer_lost`` callbacks.
        Handlers already running on it finish, but their answers are dropped.
        """
        self._down.add(address)
        self._disconnect(address, "killed")

    def revive(self, address: RunnerAddress) -> None:
        """Make a killed runner reachable again."""
        self._down.discard(address)

    def is_down(self, address: RunnerAddress) -> bool:
        """Whether :meth:`kill` was called for ``address`` without :meth:`revive`."""
        return address in self._down

    def _join(self, transport: LocalTransport) -> None:
        self._members.append(transport)

    def _listen(self, transport: LocalTransport) -> None:
        current = self._listening.get(transport.own_address)
        if current is not None and current is not transport:
            raise ConfigError(f"address {transport.own_address} is already in use",
                              setting="runner_port")
        self._listening[transport.own_address] = transport

    def _leave(self, transport: LocalTransport) -> None:
        self._disconnect(transport.own_address, "closed")
        transport._fail_calls(peer_unavailable(transport.own_address, "transport closed"))
        if self._listening.get(transport.own_address) is transport:
            del self._listening[transport.own_address]
        if transport in self._members:
            self._members.remove(transport)

    def _target(self, sender: LocalTransport, peer: RunnerAddress) -> LocalTransport:
        if sender.closed or sender.own_address in self._down:
            raise peer_unavailable(peer, "this runner is down")
        target = self._listening.get(peer)
        if target is None or peer in self._down:
            raise peer_unavailable(peer, "connection refused")
        return target

    def _disconnect(self, address: RunnerAddress, why: str) -> None:
        error = peer_unavailable(address, f"connection lost ({why})")
        for member in list(self._members):
            if member.own_address == address:
                member._fail_calls(error)
                member._links.clear()  # a dead runner gets no callbacks
            elif address in member._links:
                member._links.discard(address)
                call_lost_callbacks(member._lost_callbacks, address)
        target = self._listening.get(address)
        if target is not None:
            target._fail_calls(error)


class LocalTransport:
    """A :class:`~covey.sharding.transport._protocol.RunnerTransport` inside one event loop.

    Args:
        network: the :class:`LocalNetwork` shared by the runners that talk.
        address: this runner's address (``RunnerAddress("local", n)`` by habit).
        options: the frame limit is honoured; the other options concern sockets.
    """

    def __init__(self, network: LocalNetwork, address: RunnerAddress, *,
                 options: TransportOptions | None = None) -> None:
        self._net = network
        self.own_address = address
        self._encoder = FrameEncoder((options or TransportOptions()).max_frame_bytes)
        self._started = False
        self.closed = False
        self._on_request: RequestHandler | None = None
        self._on_notify: NotifyHandler | None = None
        self._lost_callbacks: list[PeerLostCallback] = []
        self._links: set[RunnerAddress] = set()  # peers we have reached (a "connection")
        self._calls: set[asyncio.Future[Body]] = set()  # waiting calls to or from us
        self._tasks = TransportTasks("covey-local-transport")
        network._join(self)

    @property
    def address(self) -> RunnerAddress | None:
        """This runner's address once started; None for a client-only transport."""
        return self.own_address if self._started else None

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame payload this transport sends or accepts."""
        return self._encoder.max_frame_bytes

    def on_peer_lost(self, callback: PeerLostCallback) -> None:
        """Call ``callback(peer)`` when a peer this runner has reached is killed or closed."""
        self._lost_callbacks.append(callback)

    def use_tasks(self, tasks: TaskSet) -> None:
        """Run handlers as tasks of ``tasks`` from now on."""
        self._tasks.use(tasks)

    async def start(self, on_request: RequestHandler, on_notify: NotifyHandler) -> RunnerAddress:
        """Become reachable at the address given to the constructor.

        Raises:
            ConfigError: another live transport on the network has the address.
        """
        if self.closed:
            raise ConfigError("transport is closed", setting="runner_port")
        self._net._listen(self)
        self._on_request, self._on_notify = on_request, on_notify
        self._started = True
        return self.own_address

    async def close(self) -> None:
        """Leave the network, fail waiting calls, cancel running handlers."""
        if self.closed:
            return
        self.closed = True
        self._net._leave(self)
        await self._tasks.close()

    async def request(self, peer: RunnerAddress, body: Body, *,
                      timeout: float) -> Body:
        """Call ``peer``'s request handler with a msgpack copy of ``body``.

        Raises:
            TransportError: peer_unavailable, timeout, frame_too_large or remote_failure.
            SerializationError: the body cannot be encoded.
        """
        frame = self._encoder.encode({"t": REQ, "i": 0, "b": body})
        target = self._net._target(self, peer)
        target._check_incoming(frame)
        self._links.add(peer)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Body] = loop.create_future()
        self._calls.add(future)
        target._calls.add(future)
        target._spawn(target._answer(self.address, decode_payload(frame)["b"], future, self))
        handle = loop.call_later(timeout, expire, future, peer, timeout)
        try:
            return await future
        finally:
            handle.cancel()
            self._calls.discard(future)
            target._calls.discard(future)

    async def notify(self, peer: RunnerAddress, body: Body) -> None:
        """Hand a msgpack copy of ``body`` to ``peer``'s notify handler; do not wait.

        Raises:
            TransportError: peer_unavailable or frame_too_large.
            SerializationError: the body cannot be encoded.
        """
        frame = self._encoder.encode({"t": NOTE, "b": body})
        target = self._net._target(self, peer)
        target._check_incoming(frame)
        self._links.add(peer)
        target._spawn(target._deliver(self.address, decode_payload(frame)["b"]))

    # -- the receiving side ---------------------------------------------------

    def _check_incoming(self, frame: bytes) -> None:
        size = len(frame) - HEADER_SIZE
        if size > self.max_frame_bytes:
            logger.warning("refusing a %d-byte frame for %s (limit %d)",
                           size, self.own_address, self.max_frame_bytes)
            raise TransportError(
                f"frame of {size} bytes exceeds the peer's max_frame_bytes="
                f"{self.max_frame_bytes}",
                reason=Reason.FRAME_TOO_LARGE, size=size, limit=self.max_frame_bytes)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    async def _answer(self, caller: RunnerAddress | None, body: Any,
                      future: asyncio.Future[Body], sender: LocalTransport) -> None:
        try:
            if self._on_request is None:
                raise RuntimeError("this transport does not serve requests")
            result = await self._on_request(caller, body)
            frame = self._encoder.encode({"t": RES, "i": 0, "b": result})
            sender._check_incoming(frame)
            outcome: Body | TransportError = decode_payload(frame)["b"]
        except Exception as exc:
            logger.warning("request handler on %s failed: %s: %s", self.own_address,
                           type(exc).__name__, exc, exc_info=not isinstance(exc, TransportError))
            # the same fields a TCP peer would send in its err frame
            outcome = error_from_frame(self.own_address, *error_fields(remote_failure(exc)))
        if future.done():
            return  # the caller timed out, was cancelled, or one side was killed
        if isinstance(outcome, TransportError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    async def _deliver(self, caller: RunnerAddress | None, body: Any) -> None:
        try:
            if self._on_notify is not None:
                await self._on_notify(caller, body)
        except Exception:
            logger.exception("notify handler on %s failed", self.own_address)

    def _fail_calls(self, error: TransportError) -> None:
        calls, self._calls = self._calls, set()
        for future in calls:
            if not future.done():
                future.set_exception(error)

