"""Messenger: routes entity messages and completes persisted ones.

One object for the layers above, composed of four parts with one job each:

- :class:`~._outbound.Outbound`: a call to its shard's owner, with retries and
  the stored-reply watch (any process);
- :class:`~._wire.Inbound`: answers what peers send, in the messenger's wire
  protocol (a runner);
- :class:`~._completion.Completion`: runs a message here, once, and completes
  it with a fenced write;
- :class:`~._storage_read.StorageReader`: reads stored messages of the shards
  held here, and the delivery timers of delayed ones.

Every task any of them starts (the read and timer loops, each message run
apart from its caller) is spawned into the :class:`~covey.core.TaskSet` the
owner hands over, so a crashed loop reaches the owner and :meth:`close` leaves
nothing behind. The public methods hand out their part's coroutine rather than
awaiting it: the call path costs no extra frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from covey.core import Clock, CoveyConfig, RunnerAddress, ShardId
from covey.core.runtime import TaskSet
from covey.sharding._completion import Completion
from covey.sharding._delivery import DeliveryRegistry
from covey.sharding._envelope import Envelope
from covey.sharding._outbound import Outbound
from covey.sharding._sharding import Sharding
from covey.sharding._storage_read import StorageReader
from covey.sharding._wire import Inbound
from covey.sharding.transport import Body, RunnerTransport
from covey.storage import Message, Reply, Storage

log = logging.getLogger("covey.messages")


class Messenger:
    """Message routing and persisted-message completion for one process.

    Args:
        config: the sharding options and the frame limit.
        storage: a started storage.
        transport: reaches the other runners.
        sharding: this process's membership and shard ownership.
        clock: the time source.
        deliveries: who runs which entity type on this runner (empty on a
            client-only process: "this process hosts no entities").
        tasks: the set every task of the messenger is spawned into.
    """

    def __init__(
        self,
        config: CoveyConfig,
        storage: Storage,
        transport: RunnerTransport,
        sharding: Sharding,
        clock: Clock,
        *,
        deliveries: DeliveryRegistry,
        tasks: TaskSet,
    ) -> None:
        options = config.sharding
        self._sharding = sharding
        self._tasks = tasks
        self._deliveries = deliveries
        self._shutdown_grace = options.shutdown_grace
        self._completion = Completion(options, storage, sharding, clock, deliveries,
                                      self.schedule, self.wake_sent)
        self._reader = StorageReader(options, storage, sharding, clock, self._completion,
                                     self._spawn)
        self._inbound = Inbound(self._completion, sharding, self._spawn)
        self._outbound = Outbound(config, storage, transport, sharding, clock,
                                  self._completion, self._spawn)
        #: called with (envelope, reply, seconds) after each completion here
        self.on_completed: list[Callable[[Envelope, Reply, float], None]] = (
            self._completion.on_completed)
        sharding.listeners.append(self)

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start the storage read and delivery timer loops (a runner only)."""
        if self._sharding.address is not None:
            self._reader.start(self._tasks)

    async def close(self) -> None:
        """Stop the loops and cancel every message still being run here."""
        await self._tasks.close()

    def wake_sent(self, messages: list[Message]) -> None:
        """Wake the owners of the messages a run's commit stored (its outbox)."""
        self._spawn(self._wake_quietly([Envelope(m, persisted=True) for m in messages]))

    async def _wake_quietly(self, envelopes: list[Envelope]) -> None:
        try:
            await self._outbound.push_many(envelopes)
        except Exception:
            # they are stored: the owners' storage reads find them anyway
            log.warning("waking the owners of %d sent messages failed", len(envelopes),
                        exc_info=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._tasks.closed:  # stopped: nothing new runs here, as on a lost shard
            coro.close()
            return
        self._tasks.spawn(coro, name="covey-message")

    # ---- ShardListener ---------------------------------------------------

    async def shards_acquired(self, shards: dict[ShardId, int]) -> None:
        """Read the new shards' stored messages (and learn when delayed ones come due)."""
        self._reader.resync()

    async def shards_lost(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop the deliverers' work on ``shards``; if ``graceful``, let runs that
        finished store their replies first."""
        await self._deliveries.stop_shards(shards, graceful=graceful)
        if graceful:
            # a handler that finished still has to store its reply: let it, before
            # the shard is released (else the next owner runs the message again)
            completing = self._completion.running_in(shards)
            if completing:
                await asyncio.wait(completing, timeout=self._shutdown_grace)

    # ---- reading storage -------------------------------------------------

    def poke(self) -> None:
        """Read storage now (a wake-up arrived, or work waits there)."""
        self._reader.poke()

    def resync(self) -> None:
        """Read storage now and re-learn due times (wake-ups may have been missed)."""
        self._reader.resync()

    def schedule(self, due: float) -> None:
        """Read storage again at ``due`` (a delayed message comes due then)."""
        self._reader.schedule(due)

    # ---- outbound --------------------------------------------------------

    def call(
        self, envelope: Envelope, *, timeout: float, discard: bool, transaction: Any = None
    ) -> Coroutine[Any, Any, Reply | None]:
        """Deliver ``envelope`` and return its reply (``None`` when ``discard``).

        With ``transaction`` (an application's database connection inside a
        transaction) a persisted envelope is stored through that connection and
        runs only if it commits; the owner is woken at commit. Returns ``None``.
        A message :meth:`checked` refuses is neither sent nor stored.

        Raises:
            ClusterError: the message is refused, or the call failed; ``timeout``
                (``last_reason`` says why it was retried) when the deadline passed.
        """
        return self._outbound.call(envelope, timeout=timeout, discard=discard,
                                   transaction=transaction)

    def checked(self, message: Message) -> Message:
        """``message``, once ``Message.check`` and the size limit pass."""
        return self._outbound.checked(message)

    def fits(self, message: Message) -> Message:
        """``message``, once the size limit of a frame passes (for messages the
        storage checks anyway when it stores them)."""
        return self._outbound.fits(message)

    def has_owner(self, shard: ShardId) -> bool:
        """Whether some live runner is assigned ``shard`` (a call could be answered)."""
        return self._outbound.has_owner(shard)

    def wait_for_reply(self, envelope: Envelope, *,
                       timeout: float) -> Coroutine[Any, Any, Reply]:
        """Wait for a stored message's reply (push to its owner, fall back to storage)."""
        return self._outbound.wait_for_reply(envelope, timeout=timeout)

    def push_many(self, envelopes: list[Envelope]) -> Coroutine[Any, Any, None]:
        """Wake the owners of stored envelopes, one notification per owner."""
        return self._outbound.push_many(envelopes)

    def push_soon(self, envelopes: list[Envelope]) -> None:
        """Wake the owners on the loop's next turn, one frame per owner for every
        push made in this turn (:meth:`Outbound.push_soon`)."""
        self._outbound.push_soon(envelopes)

    # ---- inbound ---------------------------------------------------------

    def add_handler(self, kind: str,
                    handler: Callable[[RunnerAddress | None, Body], Awaitable[Body]]) -> None:
        """Answer peers' requests and notifications of ``kind`` with ``handler``
        (:meth:`~._wire.Inbound.add`)."""
        self._inbound.add(kind, handler)

    def handle_request(self, peer: RunnerAddress | None,
                       body: Body) -> Coroutine[Any, Any, Body]:
        """The transport's request handler."""
        return self._inbound.handle_request(peer, body)

    def handle_notify(self, peer: RunnerAddress | None,
                      body: Body) -> Coroutine[Any, Any, None]:
        """The transport's notification handler."""
        return self._inbound.handle_notify(peer, body)

    # ---- completion ------------------------------------------------------

    def complete(self, shard: ShardId, reply: Reply) -> Coroutine[Any, Any, None]:
        """Complete a stored message of a shard this runner holds (fenced)."""
        return self._completion.complete(shard, reply)

    async def rerun(self, message_id: int) -> None:
        """Reset a stored message of a shard held here and run it again (forgetting
        any cached reply: a dead-letter retry, a workflow resume)."""
        envelope = await self._completion.reset(message_id)
        if envelope is not None:
            self._spawn(self._completion.run_quietly(envelope))
