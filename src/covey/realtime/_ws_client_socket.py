"""One socket of the Python WebSocket client: opening it with a credential, its frames,
and how it ended (a refusal stops the client; anything else reconnects)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp

from covey.core import ClusterError, RealtimeError, Reason
from covey.core.runtime import invalid_argument
from covey.realtime._codec import (
    BEARER_PREFIX,
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHENTICATED,
    FrameCodec,
    Wire,
)

log = logging.getLogger("covey.realtime")

TokenSource = str | Callable[[], str | Awaitable[str]] | None
Auth = Literal["subprotocol", "header", "ticket"]
#: the largest frame the client reads
MAX_INCOMING = 16 * 1024 * 1024
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Stop(Exception):
    """The server refused the credential (or it cannot be sent): stop reconnecting."""

    def __init__(self, error: RealtimeError) -> None:
        super().__init__(str(error))
        self.error = error


class Dropped(Exception):
    """The socket ended; ``code`` and ``reason`` of its close (``None``: none)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


def refused(code: int | None, reason: str) -> RealtimeError | None:
    """The error of a close that refuses the credential (4401 / 4403), else ``None``."""
    if code == CLOSE_UNAUTHENTICATED:
        return RealtimeError(f"the server refused the credential ({reason or 'unauthenticated'})",
                             reason=Reason.UNAUTHENTICATED, close_code=code)
    if code == CLOSE_FORBIDDEN:
        return RealtimeError("the server refused the connection (forbidden)",
                             reason=Reason.FORBIDDEN, close_code=code)
    return None


async def credential(source: TokenSource) -> str | None:
    """The token ``source`` gives now (it may be a function, sync or async)."""
    token: object = source() if callable(source) else source
    if inspect.isawaitable(token):
        token = await token
    if token is not None and not isinstance(token, str):
        raise invalid_argument("token", "the token source must give a string")
    return token


class ClientSocket:
    """An open aiohttp WebSocket speaking frames with ``codec``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, codec: FrameCodec) -> None:
        self.ws = ws
        self.codec = codec

    @property
    def closed(self) -> bool:
        """The socket is closing or closed."""
        return self.ws.closed

    async def send(self, frame: dict[str, Any]) -> None:
        """Send ``frame`` (raises when the socket is going)."""
        await self.send_data(self.codec.encode(frame))

    async def send_data(self, data: Wire) -> None:
        """Send an encoded frame (raises when the socket is going)."""
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def send_quietly(self, frame: dict[str, Any]) -> None:
        """Send ``frame`` if the socket takes it (a ping, a cancel: best effort)."""
        with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
            await self.send(frame)

    async def receive(self) -> dict[str, Any] | None:
        """The next frame (``None``: one that does not decode to a map).

        Raises:
            Dropped: the socket ended.
        """
        message = await self.ws.receive()
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            try:
                frame = self.codec.decode(message.data)
            except ClusterError:
                log.warning("WebSocket client: an undecodable frame was dropped")
                return None
            return frame if isinstance(frame, dict) else None
        if message.type == aiohttp.WSMsgType.CLOSE:
            raise Dropped(int(message.data), str(message.extra or ""))
        raise Dropped(self.ws.close_code, "")

    async def close(self, code: int = 1000) -> None:
        """Close the socket (waits up to 2 s for the server's close frame)."""
        await self.ws.close(code=code)


async def open_socket(session: aiohttp.ClientSession, url: str, *, codec: FrameCodec,
                      token: str | None, auth: Auth) -> ClientSocket:
    """A socket to ``url`` carrying ``token`` as ``auth`` says, its first ping sent.

    Raises:
        Stop: the token cannot be sent as a subprotocol, or the server answered
            the handshake with HTTP 401 / 403.
        aiohttp.ClientError, OSError: it could not be opened (retry).
    """
    protocols = [codec.subprotocol]
    headers: dict[str, str] = {}
    if token and auth == "subprotocol":
        if not _HTTP_TOKEN.fullmatch(token):
            raise Stop(RealtimeError("the token cannot be sent as a subprotocol (use "
                                     "auth='header' or 'ticket')",
                                     reason=Reason.INVALID_ARGUMENT, field="token"))
        protocols.append(BEARER_PREFIX + token)
    elif token and auth == "header":
        headers["Authorization"] = f"Bearer {token}"
    try:
        ws = await session.ws_connect(
            url, protocols=protocols, headers=headers, autoping=True, heartbeat=None,
            max_msg_size=MAX_INCOMING, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
    except aiohttp.WSServerHandshakeError as exc:
        refusal = refused({401: CLOSE_UNAUTHENTICATED, 403: CLOSE_FORBIDDEN}.get(exc.status),
                          exc.message)
        if refusal is not None:
            raise Stop(refusal) from None
        raise
    socket = ClientSocket(ws, codec)
    try:
        if token and auth == "ticket":
            await socket.send({"t": "auth", "token": token})
        # its pong says the server accepted the credential (frames are read in order)
        await socket.send({"t": "ping"})
    except BaseException:
        await ws.close()
        raise
    return socket
