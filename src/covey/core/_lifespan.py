"""The ASGI lifespan protocol answered for covey's own small ASGI apps.

The metrics endpoint, the SSE and WebSocket apps and the webhook receiver may be
run on their own by an ASGI server (``uvicorn module:app``); they have nothing to
start or stop, so they acknowledge the server's startup and shutdown and return.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


async def answer_lifespan(receive: Callable[[], Awaitable[Any]],
                          send: Callable[[Any], Awaitable[None]]) -> None:
    """Acknowledge ``lifespan.startup`` and ``lifespan.shutdown``; return after the latter."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
