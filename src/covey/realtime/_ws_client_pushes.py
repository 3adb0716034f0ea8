"""Pushes received by the Python WebSocket client: each id once, to its handlers, in order.

The socket's reader hands pushes over; one dispatcher task runs the handlers
(so a handler may itself call the server: the reader keeps reading its reply).
A full queue holds the reader back, so the server's bounded queue fills rather
than this process's memory.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from covey.core import RealtimeError, Reason
from covey.realtime._contract import PushSpec
from covey.realtime._ws_client_calls import SeenMids

log = logging.getLogger("covey.realtime")

PushHandler = Callable[[Any], Any]


class Pushes:
    """The push handlers of one client and the queue in front of them.

    Args:
        pushes: the contract's pushes by name.
        capacity: pushes that may wait for their handlers.
    """

    def __init__(self, pushes: Mapping[str, PushSpec], capacity: int) -> None:
        self._pushes = pushes
        self._handlers: dict[str, list[PushHandler]] = {}
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(max(1, capacity))
        self._seen = SeenMids()
        self.busy = False  # the reader waits for room (the socket is not dead)

    def on(self, name: str, handler: PushHandler) -> None:
        """Call ``handler(model)`` for each push ``name``.

        Raises:
            RealtimeError: ``invalid_argument`` when the contract declares no such push.
        """
        if name not in self._pushes:
            raise RealtimeError(f"the contract declares no push {name!r}",
                                reason=Reason.INVALID_ARGUMENT, field="push")
        self._handlers.setdefault(name, []).append(handler)

    async def received(self, frame: dict[str, Any]) -> None:
        """A ``push`` frame arrived (dropped when its ``mid`` was seen before)."""
        name = frame.get("n")
        if not isinstance(name, str) or name not in self._pushes:
            log.debug("WebSocket client: push %r is not in the contract", name)
            return
        mid = frame.get("mid")
        if mid is not None and not self._seen.first_time(mid):
            return
        self.busy = True
        try:
            await self._queue.put((name, frame.get("p")))
        finally:
            self.busy = False

    async def run(self) -> None:
        """Run the handlers of each push, in order (the client's dispatcher task)."""
        while True:
            name, payload = await self._queue.get()
            try:
                model = self._pushes[name].model.model_validate(payload)
            except ValueError as exc:
                log.warning("WebSocket client: push %s does not match the contract: %s", name,
                            str(exc)[:300])
                continue
            for handler in self._handlers.get(name, ()):
                try:
                    result = handler(model)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("the handler of WebSocket push %s raised", name)
