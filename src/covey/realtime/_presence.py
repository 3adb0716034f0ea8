"""``cluster.presence`` and ``cluster.send_to_user``: a message reaches a user's open
connections on whichever pods hold them.

- **Attach.** A connection that belongs to a user (its WebSocket's principal)
  stores a route ``("user", <tenant-scoped user id>, <connection id>)`` naming
  this runner; the hub renews the routes of the runner together, so a dead pod's
  connections stop being routable after ``route_ttl`` seconds (and calls to it
  fail at once meanwhile: its port is closed).
- **Send.** ``send_to_user`` reads the user's routes and asks each holding pod
  to hand the message to the user's connections there (this pod's directly).
  It answers ``delivered`` when at least one connection took it. Otherwise, with
  ``store=True``, it is kept in the user's mailbox for ``ttl`` seconds
  (``stored``), else ``dropped``.
- **Mailbox.** On attach, the user's stored messages are handed to the new
  connection in the order they were stored, then deleted. Each message has an
  id (``mid``), the same however often it is handed over, so clients drop a
  repeat (covey's clients remember the last 10,000 ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

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
from covey.realtime._naming import check_user, scoped
from covey.realtime._streams import encode_item
from covey.sharding.transport import Body, RunnerTransport
from covey.storage import Mail, Route, StreamStore

log = logging.getLogger("covey.realtime")

USER_ROUTE = "user"
USER_KIND = "rt.user"
MAIL_KIND = "rt.mail"
#: seconds a pod is given to hand a message to its connections
DELIVER_TIMEOUT = 2.0

Outcome = Literal["delivered", "stored", "dropped"]


class UserConnection(Protocol):
    """What presence hands messages to (a WebSocket connection of covey's server)."""

    @property
    def id(self) -> str:
        """Unique among the pod's connections."""
        ...

    def deliver(self, name: str, payload: bytes, *, mid: str | None = None) -> bool:
        """Queue a push (``payload``: JSON); ``False`` if it could not be queued."""
        ...


class Presence:
    """Which users have connections where, and the messages sent to them.

    Args:
        store: ``storage.streams`` (routes and mailboxes).
        transport: the runner mesh.
        snowflake: message ids.
        clock: route and mail expiry.
        options: the real-time options.
        runner: this runner's address (``None``: a client-only process, which can
            send but holds no connections).
    """

    def __init__(self, store: StreamStore, transport: RunnerTransport,
                 snowflake: SnowflakeGenerator, clock: Clock, options: RealtimeOptions, *,
                 runner: str | None) -> None:
        self._store = store
        self._transport = transport
        self._snowflake = snowflake
        self._clock = clock
        self._options = options
        self.runner = runner
        self._local: dict[str, dict[str, UserConnection]] = {}

    # ---- connections ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def attach(self, user: str, connection: UserConnection, *,
                     tenant: str | None = None) -> AsyncIterator[None]:
        """Route ``user``'s messages to ``connection`` while the block runs.

        The user's stored messages are handed over first, in order.

        Raises:
            RealtimeError: ``invalid_argument`` for a bad user id, or on a
                client-only process (it holds no connections).
        """
        key = await self.add(user, connection, tenant=tenant)
        try:
            yield
        finally:
            await self.remove(key, connection)

    async def add(self, user: str, connection: UserConnection, *,
                  tenant: str | None = None) -> str:
        """Attach without a block (see :meth:`attach`); returns the key for :meth:`remove`."""
        if self.runner is None:
            raise RealtimeError("a client-only process holds no user connections",
                                reason=Reason.INVALID_ARGUMENT, field="connection")
        key = scoped(tenant if tenant is not None else current_context().tenant_id,
                     check_user(user))
        self._local.setdefault(key, {})[connection.id] = connection
        await self._store.put_routes([Route(USER_ROUTE, key, connection.id, self.runner,
                                            self._clock.now() + self._options.route_ttl,
                                            tenant or "")])
        await self._flush_mail(key)
        return key

    async def remove(self, key: str, connection: UserConnection) -> None:
        """Detach ``connection`` (its socket closed)."""
        conns = self._local.get(key)
        if conns is not None:
            conns.pop(connection.id, None)
            if not conns:
                del self._local[key]
        try:
            await self._store.delete_routes(USER_ROUTE, [(key, connection.id)])
        except Exception:  # it expires anyway
            log.warning("forgetting a user connection failed", exc_info=True)

    @property
    def connections(self) -> int:
        """User connections attached on this process."""
        return sum(len(c) for c in self._local.values())

    # ---- sending --------------------------------------------------------

    async def send(self, user: str, message: Any, *, push: str = "message",
                   id: str | None = None, store: bool = False, ttl: float | None = None,
                   tenant: str | None = None) -> Outcome:
        """Hand ``message`` to every open connection of ``user``, on any pod.

        Args:
            user: the user id (the principal's ``user``).
            message: a pydantic model or anything pydantic serializes to JSON.
            push: the push name the client's handler is registered for.
            id: the message id clients deduplicate by (default: a new snowflake).
            store: keep it for the user when no connection took it.
            ttl: seconds it is kept (default ``mail_ttl``).
            tenant: the user's tenant (default: the request context's).

        Returns:
            ``"delivered"`` (a connection took it), ``"stored"`` or ``"dropped"``.
        """
        key = scoped(tenant if tenant is not None else current_context().tenant_id,
                     check_user(user))
        payload = encode_item(message, self._options.max_item_bytes)
        mid = id or str(self._snowflake.next_id())
        delivered = await self._deliver(key, push, payload, mid)
        if delivered:
            outcome: Outcome = "delivered"
        elif store:
            now = self._clock.now()
            await self._store.put_mail([Mail(key, mid, payload, now,
                                             now + (ttl or self._options.mail_ttl),
                                             {"push": push})])
            outcome = "stored"
            # a connection that attached meanwhile read the mailbox before this
            # message was in it: have its pod read it again
            for runner in {r.runner for r in await self._routes(key)}:
                await self._notify_mail(runner, key)
        else:
            outcome = "dropped"
        metrics.REALTIME_USER_MESSAGES.labels(outcome).inc()
        return outcome

    async def _routes(self, key: str) -> list[Route]:
        return await self._store.routes(USER_ROUTE, [key], now=self._clock.now())

    async def _deliver(self, key: str, push: str, payload: bytes, mid: str) -> int:
        """Connections that took the message, on every pod holding one."""
        runners = {r.runner for r in await self._routes(key)}
        counts = await asyncio.gather(*(self._deliver_at(r, key, push, payload, mid)
                                        for r in runners))
        return sum(counts)

    async def _deliver_at(self, runner: str, key: str, push: str, payload: bytes,
                          mid: str) -> int:
        if runner == self.runner:
            return self.deliver_here(key, push, payload, mid)
        try:
            answer = await self._transport.request(
                RunnerAddress.parse(runner), {"k": USER_KIND, "u": key, "n": push,
                                              "p": payload, "m": mid},
                timeout=DELIVER_TIMEOUT)
        except Exception as exc:  # a dead pod: its connections are gone
            log.debug("handing a user message to %s failed: %s", runner, exc)
            return 0
        count = answer.get("n")
        return count if isinstance(count, int) else 0

    def deliver_here(self, key: str, push: str, payload: bytes, mid: str) -> int:
        """Hand a message to this pod's connections of ``key``; how many took it."""
        return sum(1 for conn in tuple(self._local.get(key, {}).values())
                   if conn.deliver(push, payload, mid=mid))

    async def _notify_mail(self, runner: str, key: str) -> None:
        if runner == self.runner:
            await self._flush_mail(key)
            return
        try:
            await self._transport.notify(RunnerAddress.parse(runner), {"k": MAIL_KIND, "u": key})
        except Exception as exc:
            log.debug("asking %s to read a mailbox failed: %s", runner, exc)

    async def _flush_mail(self, key: str) -> None:
        """Hand ``key``'s stored messages to its connections here, then delete them."""
        while self._local.get(key):
            mails = await self._store.mail(key, now=self._clock.now(), limit=500)
            if not mails:
                return
            taken: list[str] = []
            for mail in mails:
                if not self.deliver_here(key, mail.headers.get("push", "message"),
                                         mail.payload, mail.id):
                    break  # the connection is full: the rest stay stored
                taken.append(mail.id)
            if taken:
                await self._store.delete_mail(key, taken)
            if len(taken) < len(mails):
                return

    # ---- the mesh -------------------------------------------------------

    async def handle(self, peer: RunnerAddress | None, body: Body) -> Body:
        """The messenger's handler of :data:`USER_KIND` and :data:`MAIL_KIND`."""
        key = body.get("u")
        if not isinstance(key, str):
            return {"ok": True, "n": 0}
        if body.get("k") == MAIL_KIND:
            await self._flush_mail(key)
            return {"ok": True}
        payload, push, mid = body.get("p"), body.get("n"), body.get("m")
        if not isinstance(payload, bytes) or not isinstance(push, str) or not isinstance(mid, str):
            return {"ok": True, "n": 0}
        return {"ok": True, "n": self.deliver_here(key, push, payload, mid)}

