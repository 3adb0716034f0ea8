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

Implementations: :class:`~covey.sharding._tcp_transport.TcpTransport` (sockets,
optional TLS) and :class:`~covey.sharding._local_transport.LocalTransport` (one
event loop, for tests).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from covey.core import ClusterError, Reason, RunnerAddress, TransportError

logger = logging.getLogger("covey.transport")

Body = dict[str, Any]
RequestHandler = Callable[[RunnerAddress | None, Body], Awaitable[Body]]
NotifyHandler = Callable[[RunnerAddress | None, Body], Awaitable[None]]
PeerLostCallback = Callable[[RunnerAddress], None]


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

    @property
    def address(self) -> RunnerAddress | None:
        """The address peers use to reach this runner; None until started."""
        ...


def peer_unavailable(peer: RunnerAddress | None, why: str) -> TransportError:
    """A retryable error for a peer that cannot be reached (or was lost)."""
    return TransportError(f"runner {peer} unavailable: {why}",
                          reason=Reason.PEER_UNAVAILABLE, peer=str(peer))


def timed_out(peer: RunnerAddress | None, timeout: float) -> TransportError:
    """The error for a request that got no answer in time."""
    return TransportError(f"no answer from runner {peer} within {timeout}s",
                          reason=Reason.TIMEOUT, peer=str(peer), timeout=timeout)


def failure_details(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """``(reason, message, details)`` describing a handler failure for the caller.

    A :class:`ClusterError` raised by the handler keeps its own reason only when it
    is a transport reason (e.g. an oversized reply); anything else is a
    ``remote_failure`` naming the exception type and message.
    """
    details: dict[str, Any] = {"error_type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, ClusterError):
        details["error_reason"] = exc.reason.value
    if isinstance(exc, TransportError) and exc.reason is Reason.FRAME_TOO_LARGE:
        return Reason.FRAME_TOO_LARGE.value, f"reply too large: {exc}", details
    return Reason.REMOTE_FAILURE.value, f"remote handler failed: {type(exc).__name__}: {exc}", \
        details


def error_from_frame(peer: RunnerAddress | None, reason: Any, message: Any,
                     details: Any) -> TransportError:
    """Rebuild the caller-side error from an ``err`` frame's fields.

    The fields come from the wire: a reason this version does not know (or that
    is not text) becomes ``remote_failure``, a message that is not text a generic
    one, and details that are not a map are dropped.
    """
    parsed = Reason.REMOTE_FAILURE
    if type(reason) is str:
        with contextlib.suppress(ValueError):
            parsed = Reason(reason)
    text = message if type(message) is str else "the peer reported an error without a message"
    error = TransportError(text, reason=parsed, peer=str(peer))
    if isinstance(details, dict):
        # Set after construction: a "message" detail would clash with the
        # constructor's own parameter of that name.
        error.details.update((str(k), v) for k, v in details.items())
    return error


def call_lost_callbacks(callbacks: list[PeerLostCallback], peer: RunnerAddress) -> None:
    """Run every peer-lost callback; one that raises is logged, not propagated."""
    for callback in callbacks:
        try:
            callback(peer)
        except Exception:
            logger.exception("on_peer_lost callback %r failed for %s", callback, peer)
