"""Pushes received by the Python WebSocket client: each id once, to its handlers, in order,
then acknowledged.

The socket's reader hands pushes over; one dispatcher task runs the handlers
(so a handler may itself call the server: the reader keeps reading its reply).
A full queue holds the reader back, so the server's bounded queue fills rather
than this process's memory.

A push with an id (``mid``) is acknowledged once its handlers ran (a stored
message then leaves the user's mailbox): the ids wait in :class:`Acks`, sent
as one ``ack`` frame per :data:`ACK_BATCH` ids or :data:`ACK_DELAY` seconds,
kept across a reconnect. A repeat is dropped and acknowledged again (the
server handed it over again: its first ack may have been lost with its pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from covey.core import RealtimeError, Reason
from covey.realtime._codec import MAX_ACK_MIDS, MAX_MID
from covey.realtime._contract import PushSpec
from covey.realtime._ws_client_calls import SeenMids
from covey.realtime._ws_client_socket import ClientSocket

log = logging.getLogger("covey.realtime")

PushHandler = Callable[[Any], Any]
#: seconds an ack waits for more to share its frame
ACK_DELAY = 0.05
#: ids sent in one ack frame at most (sent at once when that many wait)
ACK_BATCH = 100
#: ids kept unsent (disconnected) at most; the oldest go first (handed over again, then
#: acknowledged again)
ACK_LIMIT = 10 * MAX_ACK_MIDS


class Acks:
    """The ids of pushes handled and not acknowledged yet."""

    def __init__(self) -> None:
        self._mids: OrderedDict[str, None] = OrderedDict()
        self._waiting = asyncio.Event()  # some ids wait
        self._full = asyncio.Event()  # a batch is full

    def __len__(self) -> int:
        return len(self._mids)

    def add(self, mid: str) -> None:
        """Acknowledge ``mid`` soon (an id the wire cannot carry is not acknowledged)."""
        if not 0 < len(mid) <= MAX_MID:
            return
        self._mids[mid] = None
        if len(self._mids) > ACK_LIMIT:
            self._mids.popitem(last=False)
        self._waiting.set()
        if len(self._mids) >= ACK_BATCH:
            self._full.set()

    def take(self, count: int = ACK_BATCH) -> list[str]:
        """Up to ``count`` ids, oldest first (now no longer waiting)."""
        taken = [self._mids.popitem(last=False)[0] for _ in range(min(count, len(self._mids)))]
        if len(self._mids) < ACK_BATCH:
            self._full.clear()
        if not self._mids:
            self._waiting.clear()
        return taken

    async def next_batch(self) -> list[str]:
        """Wait for an id, then up to :data:`ACK_DELAY` for a full batch; take a batch."""
        while True:
            await self._waiting.wait()
            if not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ACK_DELAY):
                        await self._full.wait()
            taken = self.take()
            if taken:
                return taken

    def give_back(self, mids: list[str]) -> None:
        """Ids whose frame could not be sent: send them later."""
        for mid in mids:
            self.add(mid)

    async def send(self, ws: ClientSocket) -> None:
        """Send the ids in ``ack`` frames on ``ws``, batch by batch, until it drops."""
        while True:
            mids = await self.next_batch()
            try:
                await ws.send({"t": "ack", "mids": mids})
            except (aiohttp.ClientError, OSError, RuntimeError):
                self.give_back(mids)  # on the next socket
                return
            except asyncio.CancelledError:
                self.give_back(mids)  # sent or not: a second ack does no harm
                raise


class Pushes:
    """The push handlers of one client and the queue in front of them.

    Args:
        pushes: the contract's pushes by name.
        capacity: pushes that may wait for their handlers.

    Attributes:
        acks: the ids to acknowledge (the client sends them).
    """

    def __init__(self, pushes: Mapping[str, PushSpec], capacity: int) -> None:
        self._pushes = pushes
        self._handlers: dict[str, list[PushHandler]] = {}
        self._queue: asyncio.Queue[tuple[str, Any, str | None]] = asyncio.Queue(max(1, capacity))
        self._seen = SeenMids()
        self._handling: set[str] = set()  # queued mids: acknowledged once handled
        self.acks = Acks()
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
        raw_mid = frame.get("mid")
        mid = None if raw_mid is None else str(raw_mid)
        if not isinstance(name, str) or name not in self._pushes:
            log.debug("WebSocket client: push %r is not in the contract", name)
            if mid is not None:
                self.acks.add(mid)  # nothing here can take it: it must not come back
            return
        if mid is not None:
            if not self._seen.first_time(mid):
                if mid not in self._handling:  # handled: the server still had it
                    self.acks.add(mid)
                return
            self._handling.add(mid)
        self.busy = True
        try:
            await self._queue.put((name, frame.get("p"), mid))
        finally:
            self.busy = False

    async def run(self) -> None:
        """Run the handlers of each push, in order (the client's dispatcher task)."""
        while True:
            name, payload, mid = await self._queue.get()
            try:
                await self._handle(name, payload)
            finally:
                if mid is not None:
                    self._handling.discard(mid)
            if mid is not None:  # not when cancelled: a handler that did not finish
                self.acks.add(mid)

    async def _handle(self, name: str, payload: Any) -> None:
        try:
            model = self._pushes[name].model.model_validate(payload)
        except ValueError as exc:
            log.warning("WebSocket client: push %s does not match the contract: %s", name,
                        str(exc)[:300])
            return
        for handler in self._handlers.get(name, ()):
            try:
                result = handler(model)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("the handler of WebSocket push %s raised", name)
