"""The runner-to-runner transport contract and what its implementations share.

A :class:`RunnerTransport` carries requests (answered) and notifications (not
answered) between runners. Bodies are msgpack-able dicts; every failure below the
application is a :class:`~covey.core.TransportError` whose ``reason`` says what
happened:

- ``peer_unavailable`` (retryable): refused, reset or lost, also mid-request;
- ``timeout`` (retryable): no answer within the caller's timeout;
- ``frame_too_large``: the encoded frame exceeds ``max_frame_bytes``;
- ``auth_failed``: the peer refused our cluster secret;
- ``remote_failure``: the peer's handler raised; ``details`` carries
  ``error_type`` and ``message``.

Implementations: :class:`~covey.sharding.transport._tcp.TcpTransport` (sockets,
optional TLS) and :class:`~covey.sharding.transport._local.LocalTransport` (one
event loop, for tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

from covey.core import ClusterError, Reason, RunnerAddress, TransportError
from covey.core.runtime import TaskSet
from covey.sharding._wire_errors import error_from_fields

logger = logging.getLogger("covey.transport")

Body = dict[str, Any]
RequestHandler = Callable[[RunnerAddress | None, Body], Awaitable[Body]]
NotifyHandler = Callable[[RunnerAddress | None, Body], Awaitable[None]]
PeerLostCallback = Callable[[RunnerAddress], None]
T = TypeVar("T")


class RunnerTransport(Protocol):
    """Requests and notifications between runners.

    The first argument handlers receive is the caller's advertised address, or
    None for a client-only caller (one that never called :meth:`start`).
    """

    async def start(self, on_request: RequestHandler, on_notify: NotifyHandler) -> RunnerAddress:
        """Listen (port 0 picks a free port) and return the address peers should use."""
        ...

    async def close(self) -> None:
        """Stop listening, close every connection, fail pending requests (peer_unavailable)."""
        ...

    async def request(self, peer: RunnerAddress, body: Body, *,
                      timeout: float) -> Body:
        """Send ``body`` to ``peer``'s request handler and return its answer.

        Raises:
            TransportError: see the module docstring for the reasons.
            SerializationError: ``body`` holds a value msgpack cannot encode.
        """
        ...

    async def notify(self, peer: RunnerAddress, body: Body) -> None:
        """Send ``body`` to ``peer``'s notify handler; no answer, raises only if unsent."""
        ...

    def on_peer_lost(self, callback: PeerLostCallback) -> None:
        """Call ``callback(peer)`` (synchronously, in the loop) when a connection drops."""
        ...

    def use_tasks(self, tasks: TaskSet) -> None:
        """Spawn every connection and handler task into ``tasks`` from now on.

        A transport never given a set keeps its own; either way :meth:`close`
        leaves no task of the transport running.
        """
        ...

    @property
    def address(self) -> RunnerAddress | None:
        """The address peers use to reach this runner; None until started."""
        ...


class TransportTasks:
    """Where a transport's tasks live: the owner's set once given, else its own.

    Args:
        name: the name of the transport's own set (and of its tasks).
    """

    __slots__ = ("_given", "_own")

    def __init__(self, name: str) -> None:
        self._own = TaskSet(name)
        self._given: TaskSet | None = None

    def use(self, tasks: TaskSet) -> None:
        """Spawn into ``tasks`` from now on (tasks already running stay where they are)."""
        self._given = tasks

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a tracked task.

        When the owner closed its set before closing the transport (it stops its
        tasks first), the transport's own set takes over, so peers keep getting
        answers until :meth:`close`.

        Raises:
            RuntimeError: the transport is closed.
        """
        given = self._given
        if given is not None and not given.closed:
            return given.spawn(coro)
        return self._own.spawn(coro)

    async def close(self) -> None:
        """Cancel every task of the transport, in both sets, and wait for them."""
        await self._own.close()
        if self._given is not None:
            await self._given.close()


def peer_unavailable(peer: RunnerAddress | None, why: str) -> TransportError:
    """A retryable error for a peer that cannot be reached (or was lost)."""
    return TransportError(f"runner {peer} unavailable: {why}",
                          reason=Reason.PEER_UNAVAILABLE, peer=str(peer))


def timed_out(peer: RunnerAddress | None, timeout: float) -> TransportError:
    """The error for a request that got no answer in time."""
    return TransportError(f"no answer from runner {peer} within {timeout}s",
                          reason=Reason.TIMEOUT, peer=str(peer), timeout=timeout)


def expire(future: asyncio.Future[Any], peer: RunnerAddress | None, timeout: float) -> None:
    """Fail a waiting request with :func:`timed_out` (a ``call_later`` target)."""
    if not future.done():
        future.set_exception(timed_out(peer, timeout))


def remote_failure(exc: BaseException) -> TransportError:
    """The error a caller gets when the peer's request handler raised ``exc``.

    A :class:`ClusterError` raised by the handler keeps its own reason only when it
    is a transport reason (e.g. an oversized reply); anything else is a
    ``remote_failure`` naming the exception type and message.
    """
    details: dict[str, Any] = {"error_type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, ClusterError):
        details["error_reason"] = exc.reason.value
    if isinstance(exc, TransportError) and exc.reason is Reason.FRAME_TOO_LARGE:
        return TransportError(f"reply too large: {exc}", reason=Reason.FRAME_TOO_LARGE,
                              **details)
    return TransportError(f"remote handler failed: {type(exc).__name__}: {exc}",
                          reason=Reason.REMOTE_FAILURE, **details)


def error_from_frame(peer: RunnerAddress | None, reason: Any, message: Any,
                     details: Any) -> TransportError:
    """Rebuild the caller-side error from an ``err`` frame's fields (see
    :func:`~covey.sharding._wire_errors.error_from_fields`; unknown reasons
    become ``remote_failure``)."""
    return cast(TransportError, error_from_fields(
        reason, message, details, fallback=Reason.REMOTE_FAILURE, kind=TransportError,
        peer=str(peer)))


def call_lost_callbacks(callbacks: list[PeerLostCallback], peer: RunnerAddress) -> None:
    """Run every peer-lost callback; one that raises is logged, not propagated."""
    for callback in callbacks:
        try:
            callback(peer)
        except Exception:
            logger.exception("on_peer_lost callback %r failed for %s", callback, peer)
