"""This pod's stream subscribers, the pushes that feed them and the safety re-read.

- **Interest.** The first subscriber of a stream on this pod stores a route
  ``("stream", key, <this runner>)`` before it reads anything, so publishers
  push the stream's items here; the routes of a pod are renewed together every
  ``route_ttl / 3`` seconds and expire when it dies. A stream left without
  subscribers keeps its route until the next renewal (a reconnecting client
  does not make the route flap), then it is deleted.
- **Pushes.** A publisher pushes each committed item to every runner that holds
  a route for its stream (:meth:`StreamHub.deliver` here); each subscriber takes
  what follows its own cursor and re-reads the store when something does not.
- **Safety re-read.** Every ``poll_interval`` seconds the heads of the streams
  served here are read in one query; a subscriber behind its stream's head (a
  push was lost: a peer's connection dropped, a publisher in an application's
  transaction, a pod that did not know about this one yet) re-reads the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from covey.core import Clock, RealtimeOptions
from covey.realtime._subscription import LocalSubscription
from covey.realtime._types import Cursor
from covey.storage import Route, StreamHead, StreamItem, StreamStore

log = logging.getLogger("covey.realtime")

STREAM_ROUTE = "stream"


class StreamHub:
    """The subscribers of one process, by stream key.

    Args:
        store: ``storage.streams``.
        clock: the time source.
        options: the real-time options.
        runner: this runner's address (``None``: a client-only process, which
            receives no pushes: its subscribers rely on the safety re-read).
    """

    def __init__(self, store: StreamStore, clock: Clock, options: RealtimeOptions, *,
                 runner: str | None) -> None:
        self._store = store
        self._clock = clock
        self._options = options
        self.runner = runner
        self._subscribers: dict[str, set[LocalSubscription]] = {}
        self._routed: set[str] = set()  # keys with a stored route of this runner
        self._registering: dict[str, asyncio.Future[None]] = {}
        self.closing = asyncio.Event()

    # ---- subscribers ----------------------------------------------------

    async def subscribe(self, name: str, key: str, after: Cursor | None, *,
                        max_items: int | None = None,
                        max_bytes: int | None = None) -> LocalSubscription:
        """A subscriber of ``key`` yielding what follows ``after`` (``None``: what is
        published from now on)."""
        await self._route(key)
        start = after
        if start is None:
            heads = await self._store.heads([key])
            head = heads.get(key)
            start = Cursor(head.epoch, head.last) if head is not None else Cursor(0, 0)
        sub = LocalSubscription(name, key, start, self._read,
                                max_items=max_items or self._options.buffer_items,
                                max_bytes=max_bytes or self._options.buffer_bytes,
                                on_close=self._forget)
        if self.closing.is_set():
            sub.stop()
        else:
            self._subscribers.setdefault(key, set()).add(sub)
        return sub

    async def _read(self, key: str, after: int, limit: int
                    ) -> tuple[StreamHead | None, list[StreamItem]]:
        return await self._store.read(key, after, limit=limit)

    def _forget(self, sub: LocalSubscription) -> None:
        subs = self._subscribers.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.key]

    async def _route(self, key: str) -> None:
        """Store this runner's route for ``key`` (once; concurrent callers wait)."""
        if self.runner is None or key in self._routed:
            return
        pending = self._registering.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._registering[key] = future
        try:
            await self._store.put_routes([Route(STREAM_ROUTE, key, self.runner, self.runner,
                                                self._clock.now() + self._options.route_ttl)])
            self._routed.add(key)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter re-raises it, nobody else must
            raise
        finally:
            del self._registering[key]

    @property
    def streams_served(self) -> list[str]:
        """The stream keys with a subscriber on this process."""
        return list(self._subscribers)

    @property
    def connections(self) -> int:
        """Open subscribers on this process."""
        return sum(len(s) for s in self._subscribers.values())

    # ---- pushes ---------------------------------------------------------

    def deliver(self, items: Iterable[StreamItem]) -> None:
        """Offer pushed items to the subscribers of their streams."""
        for item in items:
            subs = self._subscribers.get(item.stream)
            if subs:
                for sub in tuple(subs):
                    sub.offer(item)

    def poke(self, keys: Iterable[str]) -> None:
        """The streams ``keys`` moved (an item committed elsewhere): re-read them."""
        for key in keys:
            for sub in tuple(self._subscribers.get(key, ())):
                sub.poke()

    def stop_all(self) -> None:
        """End every subscriber (the pod drains: SSE clients get ``retry:``)."""
        self.closing.set()
        for subs in list(self._subscribers.values()):
            for sub in tuple(subs):
                sub.stop()

    # ---- the loops ------------------------------------------------------

    async def poll_loop(self) -> None:
        """The safety re-read (see the module docstring), until cancelled."""
        while True:
            await self._clock.sleep(self._options.poll_interval)
            try:
                await self.check_heads()
            except Exception:
                log.warning("reading the stream heads failed; trying again", exc_info=True)

    async def check_heads(self) -> None:
        """Poke the subscribers that are behind their stream's head."""
        keys = list(self._subscribers)
        if not keys:
            return
        heads = await self._store.heads(keys)
        for key in keys:
            head = heads.get(key)
            for sub in tuple(self._subscribers.get(key, ())):
                cursor = sub.cursor
                if head is None:
                    if cursor.epoch != 0:
                        sub.poke()
                elif cursor.epoch != head.epoch or cursor.position < head.last:
                    sub.poke()

    async def route_loop(self) -> None:
        """Renew this runner's routes (streams and users) and drop unused stream
        routes, every ``route_ttl / 3`` seconds, until cancelled."""
        if self.runner is None:
            return
        while True:
            await self._clock.sleep(self._options.route_ttl / 3)
            try:
                await self.renew()
            except Exception:
                log.warning("renewing the real-time routes failed; trying again", exc_info=True)

    async def renew(self) -> None:
        """One renewal (see :meth:`route_loop`)."""
        assert self.runner is not None
        idle = [key for key in self._routed if key not in self._subscribers]
        if idle:
            await self._store.delete_routes(STREAM_ROUTE, [(key, self.runner) for key in idle])
            self._routed.difference_update(idle)
        await self._store.renew_routes(self.runner, self._clock.now() + self._options.route_ttl)

    async def leave(self) -> None:
        """Delete this runner's routes (it stops): publishers stop pushing here."""
        self.stop_all()
        if self.runner is not None:
            await self._store.delete_runner_routes(self.runner)
            self._routed.clear()
