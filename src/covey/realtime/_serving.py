"""A WebSocket contract served by a cluster member: presence attached, drain wired.

:func:`cluster_websocket` wraps :func:`~covey.realtime.websocket_app`: each
connection whose principal names a user is attached to :class:`Presence` (so
``send_to_user`` reaches it, the user's stored messages are handed to it on
connect, and its client's ``ack`` frames delete them from the mailbox), and
every connection is closed with 1012 when the pod drains.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from covey.realtime._contract import Contract
from covey.realtime._presence import Presence
from covey.realtime._ws_auth import Authenticate
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import Hook, WebSocketApp, websocket_app

log = logging.getLogger("covey.realtime")


def cluster_websocket(impl: type[Contract], presence_of: Callable[[], Presence],
                      closing: asyncio.Event, *, authenticate: Authenticate | None = None,
                      on_connect: Hook | None = None, on_disconnect: Hook | None = None,
                      **options: Any) -> WebSocketApp:
    """``websocket_app(impl, ...)`` with the member's presence (``presence_of()``, read
    when a connection opens: the app may be built before the member starts) and
    drain (``closing``); ``options`` are :func:`~covey.realtime.websocket_app`'s."""
    attached: dict[str, tuple[Presence, str]] = {}  # connection id -> (presence, key)

    async def connected(connection: Connection) -> None:
        principal = connection.principal
        presence = presence_of()
        if principal.user is not None and presence.runner is not None:
            key = await presence.add(principal.user, connection, tenant=principal.tenant)
            attached[connection.id] = (presence, key)
            connection.on_ack = functools.partial(presence.acked, key)
        if on_connect is not None:
            await on_connect(connection)

    async def disconnected(connection: Connection) -> None:
        try:
            if on_disconnect is not None:
                await on_disconnect(connection)
        finally:
            found = attached.pop(connection.id, None)
            if found is not None:
                await found[0].remove(found[1], connection)

    return websocket_app(impl, authenticate=authenticate, on_connect=connected,
                         on_disconnect=disconnected, closing=closing, **options)
