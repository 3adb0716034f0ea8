"""``cluster.streams``: publish to named streams from any pod, subscribe on any pod.

Publishing stores the item first (``storage.streams``: a position in commit
order), then pushes it over the runner mesh to the pods that hold a route for
the stream (they have a subscriber) and offers it to this pod's own
subscribers. Inside a transaction the item is stored with it, and the pushes go
out after the commit when covey sees the commit (a persisted handler's effect
transaction); in the application's own transaction the subscribers' safety
re-read delivers it (within ``poll_interval``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import pydantic
import pydantic_core

from covey.core import (
    Clock,
    RealtimeError,
    RealtimeOptions,
    Reason,
    RunnerAddress,
    SnowflakeGenerator,
    current_context,
    metrics,
)
from covey.core.runtime import inject_trace
from covey.entities.runtime import EffectScope
from covey.realtime._hub import STREAM_ROUTE, StreamHub
from covey.realtime._naming import check_stream, scoped
from covey.realtime._sse import EventStreamResponse
from covey.realtime._subscription import EVENT_HEADER, LocalSubscription
from covey.realtime._types import Cursor
from covey.sharding.transport import Body, RunnerTransport
from covey.storage import StreamEntry, StreamItem, StreamStore, TransactionalStreams

log = logging.getLogger("covey.realtime")

#: the wire kinds of the real-time pushes (see :meth:`Streams.handle`)
ITEMS_KIND = "rt.items"
POKE_KIND = "rt.poke"
#: an SSE event name
EVENT_NAME = re.compile(r"[A-Za-z0-9._:-]{1,100}")
#: seconds a publisher trusts what it read of a stream's routes
ROUTES_CACHE_SECONDS = 0.5


def encode_item(item: Any, limit: int) -> bytes:
    """``item`` as JSON (a pydantic model, or anything pydantic can serialize).

    Raises:
        RealtimeError: ``invalid_argument`` (``details["field"] == "item"``) when it
            cannot be encoded or is larger than ``limit`` bytes.
    """
    try:
        data = (item.model_dump_json().encode() if isinstance(item, pydantic.BaseModel)
                else pydantic_core.to_json(item))
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise RealtimeError(f"stream item cannot be encoded as JSON: {exc}",
                            reason=Reason.INVALID_ARGUMENT, field="item") from None
    if len(data) > limit:
        raise RealtimeError(f"stream item is {len(data)} bytes; the limit is {limit} "
                            "(COVEY_REALTIME_MAX_ITEM_BYTES)", reason=Reason.INVALID_ARGUMENT,
                            field="item", size=len(data), limit=limit)
    return data


def items_body(items: Sequence[StreamItem]) -> Body:
    """The notification that pushes committed items to a subscribing pod."""
    return {"k": ITEMS_KIND, "i": [[i.stream, i.epoch, i.position, i.id, i.payload,
                                    dict(i.headers), i.published_at] for i in items]}


def items_of(body: Body) -> list[StreamItem]:
    """The items of an :func:`items_body` (malformed entries are dropped: the
    subscribers' safety re-read still finds the items)."""
    out: list[StreamItem] = []
    rows = body.get("i")
    for row in rows if isinstance(rows, list) else ():
        try:
            key, epoch, position, item_id, payload, headers, published = row
            out.append(StreamItem(str(key), int(epoch), int(position), int(item_id),
                                  bytes(payload), {str(k): str(v) for k, v in headers.items()},
                                  float(published)))
        except (TypeError, ValueError, AttributeError):
            log.warning("dropped a malformed stream push")
    return out


class Streams:
    """Named streams (``cluster.streams``).

    Args:
        store: ``storage.streams``.
        hub: this process's subscribers.
        transport: the runner mesh (pushes to the pods that subscribe).
        snowflake: item ids.
        clock: publish times, route expiry.
        options: the real-time options.
        spawn: runs a push as a task of the runner (after an effect's commit).
    """

    def __init__(self, store: StreamStore, hub: StreamHub, transport: RunnerTransport,
                 snowflake: SnowflakeGenerator, clock: Clock, options: RealtimeOptions,
                 spawn: Callable[[Any], object]) -> None:
        self._store = store
        self.hub = hub
        self._transport = transport
        self._snowflake = snowflake
        self._clock = clock
        self.options = options
        self._spawn = spawn
        self._routes: dict[str, tuple[float, tuple[str, ...]]] = {}

    # ---- publishing -----------------------------------------------------

    async def publish(self, stream: str, item: Any, *, event: str | None = None,
                      id: int | None = None, tenant: str | None = None,
                      transaction: Any = None) -> Cursor | None:
        """Store ``item`` in ``stream`` and push it to every subscriber, on any pod.

        Args:
            stream: the stream's name (``"orders"``, ``f"user:{uid}"``).
            item: a pydantic model or anything pydantic serializes to JSON.
            event: the SSE event name its clients see (``None``: a plain message).
            id: the item's id (default: a new snowflake); publishing an id the
                stream holds already stores nothing (a retried publish).
            tenant: the stream's tenant (default: the request context's).
            transaction: ``None`` (stored now), a persisted handler's context
                (``self.ctx``: stored with its commit, pushed after it),
                or the application's connection inside its transaction (stored
                only if it commits; delivered by the subscribers' safety re-read).

        Returns:
            The item's cursor (``None`` inside a transaction, where the position is
            given at commit).

        Raises:
            RealtimeError: ``invalid_argument`` for a bad stream name, event name,
                an item that does not encode or is too large.
        """
        entry = self._entry(stream, item, event, id, tenant)
        if transaction is not None:
            await self._publish_in(transaction, [entry])
            return None
        routes = asyncio.ensure_future(self._runners_of(entry.stream))
        try:
            items = await self._store.append([entry], now=entry.published_at,
                                             sync=self.options.sync_publish)
        except BaseException:
            routes.cancel()
            raise
        metrics.REALTIME_PUBLISHED.inc()
        await self._push(items, await routes)
        return Cursor(items[0].epoch, items[0].position)

    def _entry(self, stream: str, item: Any, event: str | None, id: int | None,
               tenant: str | None) -> StreamEntry:
        name = check_stream(stream)
        if event is not None and (not isinstance(event, str)
                                  or EVENT_NAME.fullmatch(event) is None):
            raise RealtimeError(f"invalid SSE event name {str(event)[:80]!r}: 1 to 100 "
                                "characters of letters, digits and . _ : -",
                                reason=Reason.INVALID_ARGUMENT, field="event")
        if event == "reset":
            raise RealtimeError("the SSE event name 'reset' is covey's (a cursor out of "
                                "retention)", reason=Reason.INVALID_ARGUMENT, field="event")
        if id is not None and (not isinstance(id, int) or isinstance(id, bool)
                               or not 0 < id < 2**63):
            raise RealtimeError(f"invalid item id {id!r}: a positive 64-bit integer",
                                reason=Reason.INVALID_ARGUMENT, field="id")
        context = current_context()
        key = scoped(tenant if tenant is not None else context.tenant_id, name)
        headers = dict(inject_trace(context.to_headers()))
        if event is not None:
            headers[EVENT_HEADER] = event
        return StreamEntry(key, id or self._snowflake.next_id(),
                           encode_item(item, self.options.max_item_bytes), headers,
                           self._clock.now())

    async def _publish_in(self, transaction: Any, entries: list[StreamEntry]) -> None:
        if isinstance(transaction, EffectScope):
            # staged on the run's unit of work (every backend): appended in its
            # fenced commit, never for a run that failed, was lost or was refused
            unit = transaction.effect_unit("transaction")
            unit.append_stream(entries)
            keys = sorted({e.stream for e in entries})

            def pushed_after_commit() -> None:
                metrics.REALTIME_PUBLISHED.inc(len(entries))  # counted once stored
                self._spawn(self._poke_after_commit(keys))

            unit.on_commit(pushed_after_commit)
            return
        store = self._store
        if not isinstance(store, TransactionalStreams):
            raise RealtimeError("publishing inside a transaction is not supported by this "
                                "storage", reason=Reason.INVALID_ARGUMENT, field="transaction")
        await store.append_in(transaction, entries, now=self._clock.now())
        metrics.REALTIME_PUBLISHED.inc(len(entries))

    async def _poke_after_commit(self, keys: list[str]) -> None:
        """Tell the subscribing pods that ``keys`` moved (a transaction committed)."""
        self.hub.poke(keys)
        for key in keys:
            self._routes.pop(key, None)
        runners = {r for key in keys for r in await self._runners_of(key)}
        for runner in runners - {self.hub.runner}:
            await self._notify(runner, {"k": POKE_KIND, "s": keys})

    async def _runners_of(self, key: str) -> tuple[str, ...]:
        """The runners that hold a route for ``key`` (cached briefly)."""
        now = self._clock.monotonic()
        cached = self._routes.get(key)
        if cached is not None and now - cached[0] < ROUTES_CACHE_SECONDS:
            return cached[1]
        routes = await self._store.routes(STREAM_ROUTE, [key], now=self._clock.now())
        runners = tuple(sorted({r.runner for r in routes}))
        self._routes[key] = (now, runners)
        if len(self._routes) > 100_000:
            self._routes.clear()
        return runners

    async def _push(self, items: list[StreamItem], runners: tuple[str, ...]) -> None:
        """Offer ``items`` here and push them to the other subscribing runners."""
        self.hub.deliver(items)
        others = [r for r in runners if r != self.hub.runner]
        if not others:
            return
        body = items_body(items)
        if len(others) == 1:
            await self._notify(others[0], body)
        else:
            await asyncio.gather(*(self._notify(r, body) for r in others))

    async def _notify(self, runner: str, body: Body) -> None:
        try:
            await self._transport.notify(RunnerAddress.parse(runner), body)
        except Exception as exc:  # stored: the pod's safety re-read finds it
            log.debug("pushing to %s failed: %s", runner, exc)

    # ---- subscribing ----------------------------------------------------

    async def subscribe(self, stream: str, *, after: Cursor | str | None = None,
                        tenant: str | None = None, max_items: int | None = None,
                        max_bytes: int | None = None) -> LocalSubscription:
        """A subscriber of ``stream`` on this pod (see :class:`~covey.realtime.Subscription`).

        Args:
            stream: the stream's name.
            after: resume after this cursor (``Cursor`` or ``"<epoch>:<position>"``);
                ``None``: only what is published from now on; ``"0:0"``: every
                retained item.
            tenant: the stream's tenant (default: the request context's).
            max_items: its buffer bound in items (default ``buffer_items``).
            max_bytes: its buffer bound in bytes (default ``buffer_bytes``).

        Raises:
            RealtimeError: ``invalid_argument`` (bad name), ``cursor_invalid``.
        """
        name = check_stream(stream)
        cursor = Cursor.parse(after) if isinstance(after, str) else after
        key = scoped(tenant if tenant is not None else current_context().tenant_id, name)
        return await self.hub.subscribe(name, key, cursor, max_items=max_items,
                                        max_bytes=max_bytes)

    # ---- serving over SSE -----------------------------------------------

    async def response(self, stream: str, *, after: Cursor | str | None = None,
                       tenant: str | None = None, heartbeat: float | None = None,
                       send_timeout: float | None = None,
                       retry_ms: int = 1000) -> EventStreamResponse:
        """One SSE response for ``stream`` (a Starlette route returns it; authorize
        in the route first): resume after ``after`` (the request's ``Last-Event-ID``)."""
        subscription = await self.subscribe(stream, after=after, tenant=tenant)
        return EventStreamResponse(subscription, heartbeat=heartbeat or self.options.heartbeat,
                                   send_timeout=send_timeout or self.options.send_timeout,
                                   retry_ms=retry_ms, closing=self.hub.closing)

    # ---- the mesh -------------------------------------------------------

    async def handle(self, peer: RunnerAddress | None, body: Body) -> Body:
        """The messenger's handler of :data:`ITEMS_KIND` and :data:`POKE_KIND`."""
        if body.get("k") == ITEMS_KIND:
            self.hub.deliver(items_of(body))
        else:
            keys = body.get("s")
            if isinstance(keys, list):
                self.hub.poke(k for k in keys if isinstance(k, str))
        return {"ok": True}
