"""Authentication of a WebSocket, before any handler runs.

The token comes from ``Authorization: Bearer <token>`` (non-browser clients),
from the ``bearer.<token>`` subprotocol (browsers cannot set headers; the
server echoes the covey subprotocol, never this one, or browsers fail the
connection with 1002), or from a first frame ``{"t":"auth","token":...}``
within ``auth_timeout`` (a ticket). The application's hook decides::

    authenticate(handshake) -> Principal | None          (or awaitable)
      a Principal                  served as that principal
      None, or RealtimeError       closed with 4401
        unauthenticated
      RealtimeError forbidden      closed with 4403
      anything else                closed with 1011 (logged): the client retries

A principal whose ``expires_at`` passes is closed with 4401 ``token expired``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from covey.core import ClusterError, Reason
from covey.realtime._codec import (
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHENTICATED,
    FrameCodec,
    FrameRefused,
    parse_frame,
)
from covey.realtime._types import Handshake, Principal
from covey.realtime._ws_asgi import Receive
from covey.realtime._ws_limits import WebSocketOptions

log = logging.getLogger("covey.realtime")

Authenticate = Callable[[Handshake], Principal | Awaitable[Principal | None] | None]

_UNAUTHENTICATED = frozenset({Reason.UNAUTHENTICATED, Reason.TOKEN_INVALID, Reason.AUTH_FAILED})
_FORBIDDEN = frozenset({Reason.FORBIDDEN, Reason.STREAM_FORBIDDEN})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is closed before it is served (the close frame's code and reason)."""

    code: int
    reason: str


def refusal_for(error: ClusterError) -> Refusal:
    """The close a :class:`~covey.ClusterError` raised by a hook maps to."""
    if error.reason in _UNAUTHENTICATED:
        return Refusal(CLOSE_UNAUTHENTICATED, "unauthenticated")
    if error.reason in _FORBIDDEN:
        return Refusal(CLOSE_FORBIDDEN, "forbidden")
    if error.reason is Reason.RATE_LIMITED:
        return Refusal(CLOSE_TRY_AGAIN, "try again later")
    return Refusal(CLOSE_INTERNAL, "authentication failed")


async def authenticate_with(authenticate: Authenticate, handshake: Handshake,
                            timeout: float) -> Principal | Refusal:
    """Run the hook on ``handshake``: the principal, or why the connection is refused."""
    try:
        async with asyncio.timeout(timeout):
            found = authenticate(handshake)
            if inspect.isawaitable(found):
                found = await found
    except TimeoutError:
        log.warning("the WebSocket authentication hook did not answer within %.1f s", timeout)
        return Refusal(CLOSE_INTERNAL, "authentication timed out")
    except ClusterError as exc:
        refusal = refusal_for(exc)
        if refusal.code == CLOSE_INTERNAL:
            log.warning("the WebSocket authentication hook raised %r", exc)
        return refusal
    except Exception:
        log.exception("the WebSocket authentication hook raised")
        return Refusal(CLOSE_INTERNAL, "authentication failed")
    if found is None:
        return Refusal(CLOSE_UNAUTHENTICATED, "unauthenticated")
    if not isinstance(found, Principal):
        log.error("the WebSocket authentication hook returned %s, not a Principal or None",
                  type(found).__name__)
        return Refusal(CLOSE_INTERNAL, "authentication failed")
    return found


async def read_ticket(receive: Receive, codec: FrameCodec,
                      options: WebSocketOptions) -> str | Refusal | None:
    """The token of the first frame, which must be ``{"t":"auth","token":...}``.

    Returns:
        The token; a :class:`Refusal` (4401) when the first frame is something
        else or does not come within ``auth_timeout``; ``None`` when the client
        went away.
    """
    try:
        async with asyncio.timeout(options.auth_timeout):
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return None
                if message["type"] == "websocket.receive":
                    break
    except TimeoutError:
        return Refusal(CLOSE_UNAUTHENTICATED, "no auth frame in time")
    data = message.get("bytes")
    if data is None:
        data = message.get("text")
    if data is None or len(data) > options.max_frame:
        return Refusal(CLOSE_UNAUTHENTICATED, "expected an auth frame")
    try:
        frame = parse_frame(codec.decode(data))
    except (ClusterError, FrameRefused):
        return Refusal(CLOSE_UNAUTHENTICATED, "expected an auth frame")
    if frame.kind != "auth" or frame.token is None:
        return Refusal(CLOSE_UNAUTHENTICATED, "expected an auth frame")
    return frame.token


def with_token(handshake: Handshake, token: str) -> Handshake:
    """``handshake`` carrying the ticket's ``token``."""
    return dataclasses.replace(handshake, token=token)
