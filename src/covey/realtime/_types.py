"""What the real-time parts share: cursors, delivered items, resets, subscriptions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from covey.core import RealtimeError, Reason

#: an epoch is a positive integer below 2**53 (JavaScript-safe); 0: "before the stream existed"
MAX_EPOCH = 2**53 - 1
_CURSOR = re.compile(r"(\d{1,16}):(\d{1,19})")


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A resumable position in a stream: ``"<epoch>:<position>"`` on the wire.

    ``Cursor(0, 0)`` is the start of a stream that had no item yet: it resumes
    in whatever epoch the stream's first item starts, without a reset.
    """

    epoch: int
    position: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.position}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        """The cursor ``text`` names; ``None`` for ``None`` or ``""`` (no cursor).

        Raises:
            RealtimeError: ``cursor_invalid`` for anything but ``<epoch>:<position>``
                with ``0 <= epoch < 2**53`` and ``0 <= position < 2**63``.
        """
        if text is None or text == "":
            return None
        match = _CURSOR.fullmatch(text.strip()) if len(text) <= 64 else None
        if match is None:
            raise RealtimeError(f"malformed stream cursor {text[:64]!r} (expected"
                                " '<epoch>:<position>')", reason=Reason.CURSOR_INVALID)
        epoch, position = int(match.group(1)), int(match.group(2))
        if epoch > MAX_EPOCH or position >= 2**63:
            raise RealtimeError(f"stream cursor {text!r} is out of range",
                                reason=Reason.CURSOR_INVALID)
        return cls(epoch, position)


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One item as a subscriber receives it.

    Attributes:
        stream: the stream's name (as the subscriber named it, without tenant).
        cursor: its resumable id (the SSE ``id:``).
        data: the item, encoded as JSON (UTF-8).
        event: the SSE event name the publisher gave (``None``: a plain message).
        id: the item's snowflake (unique in its stream; stable across retries).
        published_at: Unix seconds, the publisher's clock.
    """

    stream: str
    cursor: Cursor
    data: bytes
    event: str | None
    id: int
    published_at: float


@dataclass(frozen=True, slots=True)
class Reset:
    """The subscriber's cursor is gone: the stream restarted (a new epoch) or the
    cursor fell out of retention. Items were missed: the client refetches its
    state; delivery goes on from ``cursor`` (the SSE ``event: reset``)."""

    stream: str
    cursor: Cursor


@runtime_checkable
class Subscription(Protocol):
    """A subscriber of one stream on this pod: an async iterator of
    :class:`StreamMessage` and :class:`Reset`, in stream order, each once.

    ``__anext__`` raises :class:`~covey.RealtimeError` ``slow_consumer`` once its
    bounded buffer overflowed (the subscriber was closed: resume from
    :attr:`cursor`), and ``StopAsyncIteration`` once closed (by :meth:`aclose`, or
    the pod drains).
    """

    @property
    def stream(self) -> str:
        """The stream's name."""
        ...

    @property
    def cursor(self) -> Cursor:
        """The position of the last item yielded (where to resume)."""
        ...

    def __aiter__(self) -> AsyncIterator[StreamMessage | Reset]:
        ...

    async def __anext__(self) -> StreamMessage | Reset:
        ...

    async def aclose(self) -> None:
        """Stop: the buffer is released; the iterator ends."""
        ...


@dataclass(frozen=True, slots=True)
class Handshake:
    """What an authorization hook sees of an SSE request or a WebSocket handshake
    (one frozen input, so hooks can grow without breaking signatures).

    Attributes:
        path: the request path.
        headers: lower-cased header names to values (the last of repeated ones).
        query: query parameters (the last of repeated ones).
        client: ``"host:port"`` of the peer, when known.
        tenant: the request context's tenant (``None``: none).
        token: the bearer credential the client presented (``Authorization:
            Bearer``, the ``bearer.<token>`` WebSocket subprotocol, or a
            first-message ticket), ``None`` when none.
    """

    path: str
    headers: dict[str, str]
    query: dict[str, str]
    client: str | None = None
    tenant: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection belongs to, as the authentication hook decided.

    Attributes:
        user: the user id (``None``: anonymous; per-user routing needs one).
        tenant: the tenant the connection is scoped to (``None``: none).
        claims: whatever else the application wants its handlers to see.
        expires_at: Unix seconds after which the credential is no longer valid
            (the connection is closed with 4401 then); ``None``: never.
    """

    user: str | None = None
    tenant: str | None = None
    claims: dict[str, object] | None = None
    expires_at: float | None = None
