"""Running a message on its shard's owner, and completing it exactly once.

A volatile message just runs. A persisted one (pushed by its caller, or found by
the storage read) runs at most once at a time per runner (the in-flight table)
and never again once completed (the completed cache here, storage's processed
flag everywhere). Its reply and processed flag are written in one transaction
fenced by the shard's epoch; a fenced-out write drops the shard at once. A
deliverer may instead answer "retry later": the same message is rescheduled,
fenced the same way.

Each run gets a unit of work (``storage.messages.unit``) the deliverer may
stage effects on (durable state, the application's writes, outgoing
messages). A used unit commits them with the reply in that one fenced
transaction, and the owners of its outgoing messages are woken after it; a
run that failed, raised or is rescheduled discards them. An unused unit costs
nothing: the reply is stored the plain, group-committed way.

"Not due yet" and "runs again later" are answers, not errors: :class:`NotYet`.
The public ``not_owner`` reason means only that this runner does not serve the
message's shard.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

from covey.core import (
    AlreadyProcessed,
    Clock,
    ClusterError,
    EntityError,
    FencedOut,
    Reason,
    ShardId,
    ShardingOptions,
    StorageError,
)
from covey.sharding._delivery import Deliverer, DeliveryRegistry
from covey.sharding._envelope import Completed, Deferred, Envelope, Reschedule, error_payload
from covey.sharding._sharding import Sharding
from covey.storage import Fence, Message, Reply, Storage, UnitOfWork

log = logging.getLogger("covey.messages")

#: how long a persisted message waits for room in a full mailbox before trying again
_MAILBOX_RETRY = 0.01
#: runs of a message that met a retryable storage failure, tried again here at
#: once (with a backoff from this many seconds) before it waits for a later read
_STORAGE_RETRIES = 4
_STORAGE_BACKOFF = 0.025


@dataclass(frozen=True, slots=True)
class NotYet:
    """A persisted message has no reply yet, and nothing went wrong.

    The caller keeps waiting (for a later push, or for the stored reply); if
    its deadline passes first, its timeout reads ``last_reason="not_owner"``,
    as it did when these were ``not_owner`` errors.
    """

    why: str


#: the message's ``deliver_at`` (or its retry time) is still ahead
NOT_DUE = NotYet("message is not due yet")
#: the attempt failed and was rescheduled
RUNS_LATER = NotYet("the attempt failed; the message runs again later")


class Completion:
    """Runs messages here and completes the persisted ones (fenced).

    Args:
        options: the cache size and the shutdown grace.
        storage: where replies and retries are written.
        sharding: this runner's ownership (the epochs that fence the writes).
        clock: the time source of ``deliver_at``.
        deliveries: who runs which entity type.
        schedule: asks for a storage read at a time (a message comes due then).
        wake: told the messages a run's commit stored (its outbox), to wake
            their owners.
    """

    def __init__(self, options: ShardingOptions, storage: Storage, sharding: Sharding,
                 clock: Clock, deliveries: DeliveryRegistry,
                 schedule: Callable[[float], None],
                 wake: Callable[[list[Message]], None] | None = None) -> None:
        self._options = options
        self._storage = storage
        self._sharding = sharding
        self._clock = clock
        self._deliveries = deliveries
        self._schedule = schedule
        self._wake = wake
        self._inflight: dict[int, asyncio.Future[Reply | NotYet]] = {}
        self._inflight_shard: dict[int, ShardId] = {}
        self._retry_at: dict[int, float] = {}
        self._completed: collections.OrderedDict[int, Reply] = collections.OrderedDict()
        self.on_completed: list[Callable[[Envelope, Reply, float], None]] = []

    def seen(self, message_id: int) -> bool:
        """Whether the message runs here now or was completed here lately."""
        return message_id in self._inflight or message_id in self._completed

    def running_in(self, shards: set[ShardId]) -> list[asyncio.Future[Reply | NotYet]]:
        """The runs of messages of ``shards`` under way here (done once completed)."""
        return [f for i, f in self._inflight.items() if self._inflight_shard.get(i) in shards]

    async def reset(self, message_id: int) -> Envelope | None:
        """Make a stored message unprocessed again, forgetting any cached reply (a
        dead-letter retry, a workflow resume); the envelope to run, if it is stored."""
        self._completed.pop(message_id, None)
        self._retry_at.pop(message_id, None)
        await self._storage.messages.reset_request(message_id)
        message = await self._storage.messages.get(message_id)
        return None if message is None else Envelope(message, persisted=True)

    # ---- running -----------------------------------------------------------

    async def deliver_volatile(self, envelope: Envelope) -> Reply:
        """Run a volatile message here.

        Raises:
            EntityError: ``not_owner`` (or ``shutting_down``) if this runner does
                not serve the shard; whatever the deliverer raises.
        """
        if self._sharding.epoch_of(envelope.shard) is None:
            raise self.not_here(envelope.shard)
        answer = await self._deliverer(envelope).deliver(envelope)
        if isinstance(answer, Completed):
            return answer.reply
        if isinstance(answer, Reschedule | Deferred):
            raise EntityError("a volatile request cannot be rescheduled",
                              reason=Reason.INVALID_ARGUMENT)
        return answer

    async def process(self, envelope: Envelope) -> Reply | NotYet:
        """Run a stored message here, once, and complete it with a fenced write.

        Returns its reply, or :class:`NotYet` when it is not due yet or the
        attempt was rescheduled.

        Raises:
            EntityError: ``not_owner``/``shutting_down`` (the shard is not served
                here, or was lost meanwhile); whatever the deliverer raises.
            StorageError: the reply could not be stored.
        """
        message_id = envelope.message.id
        done = self._completed.get(message_id)
        if done is not None:
            return done
        running = self._inflight.get(message_id)
        if running is not None:
            return await asyncio.shield(running)
        epoch = self._sharding.epoch_of(envelope.shard)
        if epoch is None:
            raise self.not_here(envelope.shard)
        due = max(envelope.message.deliver_at or 0.0, self._retry_at.get(message_id, 0.0)) or None
        if due is not None and due > self._clock.now():
            self._schedule(due)
            return NOT_DUE
        future: asyncio.Future[Reply | NotYet] = asyncio.get_running_loop().create_future()
        self._inflight[message_id] = future
        self._inflight_shard[message_id] = envelope.shard
        try:
            result = await self._run_and_complete(envelope, epoch)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.set_exception(self.not_here(envelope.shard))
            else:
                future.set_exception(exc)
            future.exception()  # retrieved: waiters may be gone
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[message_id]
            del self._inflight_shard[message_id]

    async def run_quietly(self, envelope: Envelope) -> None:
        """:meth:`process` as a task of its own: every outcome ends here."""
        try:
            await self.process(envelope)
        except ClusterError as exc:
            log.debug("message %s not processed here: %s", envelope.message.id, exc)
        except Exception:
            # One message's bug must not stop the runner: it stays stored and
            # unprocessed, and a later read tries it again.
            log.exception("processing message %s failed", envelope.message.id)

    async def _run_and_complete(self, envelope: Envelope, epoch: int) -> Reply | NotYet:
        failures = 0
        while True:
            try:
                return await self._attempt(envelope, epoch)
            except _RunAgain as again:
                failures += 1
                if failures > _STORAGE_RETRIES or self._sharding.epoch_of(envelope.shard) != epoch:
                    raise again.cause from None
                # The store failed under the run or its unit's commit (a dropped
                # connection, usually back at once): nothing of it was kept, or its
                # commit did land and the next one finds the reply. Run it again
                # now rather than after the message's lease.
                log.info("message %s met a storage failure; running it again: %s",
                         envelope.message.id, again.cause)
                await self._clock.sleep(_STORAGE_BACKOFF * 2 ** failures)

    async def _attempt(self, envelope: Envelope, epoch: int) -> Reply | NotYet:
        started = self._clock.monotonic()
        deliverer = self._deliverer(envelope)
        fence = Fence(envelope.shard, epoch)
        # one small object; it opens nothing until the handler uses it
        unit = self._storage.messages.unit(fence, envelope.message.id)
        try:
            while True:
                try:
                    answer = await deliverer.deliver(envelope, unit)
                    break
                except EntityError as exc:
                    if exc.reason is not Reason.MAILBOX_FULL:
                        raise
                    # persisted overflow waits (it is stored) instead of failing
                    await self._clock.sleep(_MAILBOX_RETRY)
        except BaseException as exc:
            await _discard(unit)
            if isinstance(exc, StorageError) and exc.retryable:
                raise _RunAgain(exc) from exc
            raise
        if isinstance(answer, Reschedule):
            await _discard(unit)
            await self._reschedule(envelope, epoch, answer)
            return RUNS_LATER
        if isinstance(answer, Completed):  # stored by the deliverer, fenced
            await _discard(unit)
            return self._completed_by_deliverer(envelope, answer.reply, started)
        if isinstance(answer, Deferred):  # left stored: the deliverer reads it back
            await _discard(unit)
            return RUNS_LATER
        reply = answer
        try:
            if unit.used:
                reply = await self._commit(unit, reply, fence)
            else:
                await self._save_reply(reply, fence)
        except AlreadyProcessed:
            stored = await self.stored_reply(envelope.message.id)
            reply = stored or reply
        except FencedOut:
            await self._sharding.fenced([envelope.shard])
            raise self.not_here(envelope.shard) from None
        self._remember(reply)
        for callback in self.on_completed:
            callback(envelope, reply, self._clock.monotonic() - started)
        return reply

    def _completed_by_deliverer(self, envelope: Envelope, reply: Reply, started: float) -> Reply:
        self._remember(reply)
        for callback in self.on_completed:
            callback(envelope, reply, self._clock.monotonic() - started)
        return reply

    async def _commit(self, unit: UnitOfWork, reply: Reply, fence: Fence) -> Reply:
        """Complete a run whose handler staged effects: all of them with its reply,
        in one fenced transaction; none of them if it failed."""
        if reply.is_error:
            # a handler that raised keeps nothing: its writes and messages go
            await unit.discard()
            await self._save_reply(reply, fence)
            return reply
        try:
            await unit.commit(reply)
        except StorageError as exc:
            if not exc.retryable:
                raise
            raise _RunAgain(exc) from exc  # the transaction is gone: only a new run can redo it
        except EntityError as exc:
            if exc.reason is not Reason.HANDLER_FAILED:
                raise
            # an application write failed inside the commit: nothing was written,
            # and that failure is the run's answer
            reply = Reply(reply.request_id, error_payload(exc), is_error=True)
            await self._save_reply(reply, fence)
            return reply
        finally:
            await unit.discard()  # after a failed commit; a no-op after a good one
        sent = unit.sent
        if sent and self._wake is not None:
            self._wake(sent)
        return reply

    async def _save_reply(self, reply: Reply, fence: Fence) -> None:
        """Store a run's reply the plain way; a store failure retries the write,
        not the run (the handler is not run again for the store's sake)."""
        failures = 0
        while True:
            try:
                await self._storage.messages.save_reply(reply, fence)
                return
            except StorageError as exc:
                failures += 1
                if (not exc.retryable or failures > _STORAGE_RETRIES
                        or self._sharding.epoch_of(fence.shard) != fence.epoch):
                    raise
                log.info("storing the reply of message %s failed; trying again: %s",
                         reply.request_id, exc)
                await self._clock.sleep(_STORAGE_BACKOFF * 2 ** failures)

    # ---- completing --------------------------------------------------------

    async def _reschedule(self, envelope: Envelope, epoch: int, retry: Reschedule) -> None:
        try:
            await self._storage.messages.reschedule(
                envelope.message.id, deliver_at=retry.deliver_at, error=retry.error,
                fence=Fence(envelope.shard, epoch))
        except FencedOut:
            await self._sharding.fenced([envelope.shard])
            raise self.not_here(envelope.shard) from None
        self._schedule(retry.deliver_at)
        # a pushed copy of this message (sent before the retry) must not run early
        self._retry_at[envelope.message.id] = retry.deliver_at
        while len(self._retry_at) > self._options.processed_cache:
            self._retry_at.pop(next(iter(self._retry_at)))

    async def complete(self, shard: ShardId, reply: Reply) -> None:
        """Complete a stored message of a shard this runner holds (fenced).

        Raises:
            EntityError: ``not_owner``/``shutting_down``: the shard is not (or no
                longer) served here; nothing was written.
        """
        epoch = self._sharding.epoch_of(shard)
        if epoch is None:
            raise self.not_here(shard)
        try:
            await self._storage.messages.save_reply(reply, Fence(shard, epoch))
        except AlreadyProcessed:
            return
        except FencedOut:
            await self._sharding.fenced([shard])
            raise self.not_here(shard) from None
        self._remember(reply)

    async def stored_reply(self, request_id: int) -> Reply | None:
        """The stored reply of a message, or ``None`` (none yet, or storage failed)."""
        try:
            return (await self._storage.messages.replies_for([request_id])).get(request_id)
        except StorageError:
            return None

    def _remember(self, reply: Reply) -> None:
        self._completed[reply.request_id] = reply
        while len(self._completed) > self._options.processed_cache:
            self._completed.popitem(last=False)

    def not_here(self, shard: ShardId) -> EntityError:
        """The error for a message of a shard this runner does not serve."""
        reason = Reason.SHUTTING_DOWN if self._sharding.shutting_down else Reason.NOT_OWNER
        return EntityError(f"shard {shard} is not served by this runner", reason=reason,
                           shard=str(shard))

    def _deliverer(self, envelope: Envelope) -> Deliverer:
        deliverer = self._deliveries.for_type(envelope.message.address.entity_type)
        if deliverer is None:
            raise EntityError("this process hosts no entities", reason=Reason.NOT_OWNER)
        return deliverer


class _RunAgain(Exception):
    """The store failed under a run or its unit's commit: nothing of the run was
    kept, so it may run again here at once (``cause`` is raised if it may not)."""

    def __init__(self, cause: StorageError) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _discard(unit: UnitOfWork) -> None:
    """Drop a unit whose run did not complete; its failure must not hide the run's."""
    try:
        await unit.discard()
    except Exception:
        log.warning("discarding the unit of message %s failed", unit, exc_info=True)
