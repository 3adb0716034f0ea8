"""``cluster.presence`` and ``cluster.send_to_user``: a message reaches a user's open
connections on whichever pods hold them.

- **Attach.** A connection that belongs to a user (its WebSocket's principal)
  stores a route ``("user", <tenant-scoped user id>, <connection id>)`` naming
  this runner; the hub renews the routes of the runner together, so a dead pod's
  connections stop being routable after ``route_ttl`` seconds (and calls to it
  fail at once meanwhile: its port is closed).
- **Send.** ``send_to_user`` reads the user's routes and asks each holding pod
  to hand the message to the user's connections there (this pod's directly).
  It answers ``delivered`` when at least one connection took it (queued it),
  else ``stored`` with ``store=True``, else ``dropped``. Without ``store`` a
  message is fire-and-forget: a connection that dies with it queued loses it.
- **Mailbox.** With ``store=True`` the message is put in the user's mailbox
  *before* it is handed to any connection, and stays there until a client
  acknowledges it (``Connection.on_ack`` -> :meth:`Presence.acked`) or it
  expires (``ttl``, default ``mail_ttl``). On attach the oldest
  :data:`FLUSH_WINDOW` unacknowledged messages are handed to the user's
  connections on that pod in the order they were stored, each at most once per
  connection; as acks delete them the next ones follow.
  So a connection that died before its client read a message gets it again on
  the next connect. Each message has an id (``mid``), the same however often it
  is handed over, so clients drop a repeat (covey's clients remember the last
  10,000 ids) and acknowledge it again. A client that never acknowledges (an
  old one) gets the first window on each connect; its messages expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection
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
#: stored messages handed over at once (the next once acks make room)
FLUSH_WINDOW = 500
#: ids of stored messages remembered per connection as handed to it
HANDED_MIDS = 2 * FLUSH_WINDOW
#: the longest message id, in UTF-8 bytes (a client acknowledges up to 200 characters)
MAX_MID_BYTES = 200

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


class _Handed:
    """The ids of stored messages handed to one connection (the last ``size``)."""

    def __init__(self, size: int = HANDED_MIDS) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __contains__(self, mid: str) -> bool:
        return mid in self._ids

    def add(self, mid: str) -> None:
        self._ids[mid] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)


def _is_mid(mid: object) -> bool:
    """Whether ``mid`` can be a message id: 1 to 200 UTF-8 bytes, no NUL."""
    try:
        return (isinstance(mid, str) and 0 < len(mid.encode()) <= MAX_MID_BYTES
                and "\x00" not in mid)
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _check_mid(mid: object) -> str:
    if not _is_mid(mid):
        raise RealtimeError(f"invalid message id {str(mid)[:80]!r}: 1 to {MAX_MID_BYTES} "
                            "bytes, no NUL", reason=Reason.INVALID_ARGUMENT, field="id")
    assert isinstance(mid, str)
    return mid


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
        self._handed: dict[str, _Handed] = {}  # connection id -> stored mids handed to it
        self._acks: dict[str, set[str]] = {}  # key -> acked mids not deleted yet
        self._deleting: set[str] = set()  # keys whose acks some task deletes now
        self._more: set[str] = set()  # keys whose last flush filled the window

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
        self._handed[connection.id] = _Handed()
        await self._store.put_routes([Route(USER_ROUTE, key, connection.id, self.runner,
                                            self._clock.now() + self._options.route_ttl,
                                            tenant or "")])
        await self._flush_mail(key)
        return key

    async def remove(self, key: str, connection: UserConnection) -> None:
        """Detach ``connection`` (its socket closed)."""
        conns = self._local.get(key)
        self._handed.pop(connection.id, None)
        if conns is not None:
            conns.pop(connection.id, None)
            if not conns:
                del self._local[key]
                self._more.discard(key)
                if key not in self._deleting:  # acks a cancelled reader left: handed over again
                    self._acks.pop(key, None)
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
            id: the message id clients deduplicate by and acknowledge (default: a
                new snowflake; at most 200 characters).
            store: put it in the user's mailbox first; it stays there until a client
                acknowledges it or ``ttl`` passes, and is handed to each new
                connection of the user meanwhile. Without it the message is
                fire-and-forget: dropped when no connection takes it, lost when the
                connection that took it dies before its client read it.
            ttl: seconds it is kept (default ``mail_ttl``).
            tenant: the user's tenant (default: the request context's).

        Returns:
            ``"delivered"`` (a connection took it; stored, it also waits for the
            client's ack), ``"stored"`` (stored, no connection took it) or
            ``"dropped"``.

        Raises:
            RealtimeError: ``invalid_argument`` for a bad user id or message id.
        """
        key = scoped(tenant if tenant is not None else current_context().tenant_id,
                     check_user(user))
        payload = encode_item(message, self._options.max_item_bytes)
        mid = _check_mid(id) if id is not None else str(self._snowflake.next_id())
        if store:
            # stored before any connection has it: one that dies with it queued leaves
            # it for the next. And a connection attaching now either has its route read
            # below or reads the mailbox after this put (both write, then read).
            now = self._clock.now()
            await self._store.put_mail([Mail(key, mid, payload, now,
                                             now + (ttl or self._options.mail_ttl),
                                             {"push": push})])
        delivered = await self._deliver(key, push, payload, mid, store)
        outcome: Outcome = "delivered" if delivered else "stored" if store else "dropped"
        metrics.REALTIME_USER_MESSAGES.labels(outcome).inc()
        return outcome

    async def acked(self, key: str, mids: Collection[str]) -> None:
        """A client of ``key`` received the messages ``mids``: delete them from the
        mailbox, then hand over the next stored ones if the window was full.

        Acks of one key that arrive while its delete runs (from any of its
        connections) go together in the next delete. A failed delete is logged:
        those messages are handed over again on the next connect (clients drop
        the repeat and acknowledge it again) or expire.
        """
        # an id no mail can have (a client's mistake) must not fail the batch
        self._acks.setdefault(key, set()).update(mid for mid in mids if _is_mid(mid))
        if key in self._deleting:
            return  # the running delete takes them next
        self._deleting.add(key)
        try:
            while pending := self._acks.pop(key, None):
                try:
                    await self._store.delete_mail(key, pending)
                except Exception:
                    log.warning("deleting %d acknowledged messages failed", len(pending),
                                exc_info=True)
        finally:
            self._deleting.discard(key)
        if key in self._more:
            await self._flush_mail(key)

    async def _deliver(self, key: str, push: str, payload: bytes, mid: str,
                       stored: bool) -> int:
        """Connections that took the message, on every pod holding one."""
        routes = await self._store.routes(USER_ROUTE, [key], now=self._clock.now())
        counts = await asyncio.gather(*(self._deliver_at(r, key, push, payload, mid, stored)
                                        for r in {r.runner for r in routes}))
        return sum(counts)

    async def _deliver_at(self, runner: str, key: str, push: str, payload: bytes,
                          mid: str, stored: bool) -> int:
        if runner == self.runner:
            return self.deliver_here(key, push, payload, mid, stored=stored)
        try:
            answer = await self._transport.request(
                RunnerAddress.parse(runner), {"k": USER_KIND, "u": key, "n": push,
                                              "p": payload, "m": mid, "s": stored},
                timeout=DELIVER_TIMEOUT)
        except Exception as exc:  # a dead pod: its connections are gone
            log.debug("handing a user message to %s failed: %s", runner, exc)
            return 0
        count = answer.get("n")
        return count if isinstance(count, int) else 0

    def deliver_here(self, key: str, push: str, payload: bytes, mid: str, *,
                     stored: bool = False) -> int:
        """Hand a message to this pod's connections of ``key``; how many took it.

        A ``stored`` one (in the mailbox) is handed to a connection at most once:
        one that has it already (from the mailbox) counts as having taken it.
        """
        taken = 0
        for conn in tuple(self._local.get(key, {}).values()):
            handed = self._handed.get(conn.id) if stored else None
            if handed is not None and mid in handed:
                taken += 1
            elif conn.deliver(push, payload, mid=mid):
                taken += 1
                if handed is not None:
                    handed.add(mid)
        return taken

    async def _flush_mail(self, key: str) -> None:
        """Hand ``key``'s oldest unacknowledged messages to its connections here, each
        at most once per connection (they stay stored until acknowledged)."""
        if not self._local.get(key):
            return
        mails = await self._store.mail(key, now=self._clock.now(), limit=FLUSH_WINDOW)
        if not self._local.get(key):
            return  # detached meanwhile
        if len(mails) < FLUSH_WINDOW:
            self._more.discard(key)
        else:
            self._more.add(key)  # more may wait behind: look again as acks make room
        # at most half a connection's send queue per flush: a mailbox bigger than the
        # queue would overflow it (the connection closes, the client reconnects and
        # the same flush overflows it again); the rest follows as acks make room
        budget = self._options.buffer_bytes // 2
        for conn in tuple(self._local[key].values()):
            handed = self._handed.get(conn.id)
            if handed is None:
                continue
            spent = 0
            for mail in mails:
                if mail.id in handed:
                    continue
                if spent and spent + len(mail.payload) > budget:
                    self._more.add(key)
                    break
                if not conn.deliver(mail.headers.get("push", "message"), mail.payload,
                                    mid=mail.id):
                    break  # closed, or full (then closed): the rest stay stored
                handed.add(mail.id)
                spent += len(mail.payload)

    # ---- the mesh -------------------------------------------------------

    async def handle(self, peer: RunnerAddress | None, body: Body) -> Body:
        """The messenger's handler of :data:`USER_KIND` and :data:`MAIL_KIND`."""
        key = body.get("u")
        if not isinstance(key, str):
            return {"ok": True, "n": 0}
        if body.get("k") == MAIL_KIND:  # sent by pods of earlier versions
            await self._flush_mail(key)
            return {"ok": True}
        payload, push, mid = body.get("p"), body.get("n"), body.get("m")
        if not isinstance(payload, bytes) or not isinstance(push, str) or not isinstance(mid, str):
            return {"ok": True, "n": 0}
        return {"ok": True, "n": self.deliver_here(key, push, payload, mid,
                                                   stored=body.get("s") is True)}
