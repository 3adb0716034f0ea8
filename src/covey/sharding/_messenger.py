"""Messenger: routes entity messages and completes persisted ones.

Outbound (any process): a volatile call goes to the shard's owner over the
transport (or straight to the local entity), retrying on "not here" and on an
unreachable owner until the call's deadline. A persisted call is stored first;
then the envelope itself is pushed to the owner, which runs it at once and
answers with the reply. Meanwhile the caller also watches storage for the reply
(and pushes again when ownership changes): an owner the push cannot reach still
finds the message through its storage read.

Inbound (a runner): a pushed or stored persisted message runs at most once at a
time per runner (in-flight table) and never again once completed (completed
cache, then storage's processed flag). Its reply and processed flag are written
in one fenced transaction; a fenced-out write drops the shard at once.

Storage reads happen when shards are acquired, when a delayed message comes
due, when poked (NOTIFY, overflow) and on a slow safety poll.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from covey.core import (
    AlreadyProcessed,
    Clock,
    ClusterError,
    CoveyConfig,
    EntityError,
    FencedOut,
    Reason,
    RunnerAddress,
    ShardId,
    StorageError,
    TransportError,
    sleep_or_wake,
)
from covey.sharding._envelope import Envelope, Reschedule, check_size, error_for
from covey.sharding._reply_watch import push_or_stored
from covey.sharding._sharding import Sharding
from covey.sharding._transport import Body, RunnerTransport
from covey.storage import Duplicate, Fence, Message, Reply, Storage, TransactionalMessages

log = logging.getLogger("covey.messages")

_RETRY_REASONS = frozenset({
    Reason.NOT_OWNER, Reason.PEER_UNAVAILABLE, Reason.SHUTTING_DOWN, Reason.STORAGE_UNAVAILABLE,
})
_MAX_TIMER_SLEEP = 3600.0  # a delivery timer re-reads a later time on waking


class Deliverer(Protocol):
    """Runs an envelope's handler on this runner (the entity layer)."""

    async def deliver(self, envelope: Envelope) -> Reply | Reschedule:
        """Run the handler; a handler failure is an error ``Reply``, not an exception.

        A persisted envelope may also be answered with :class:`Reschedule` (retry
        the same message later).

        Raises:
            EntityError: ``not_owner`` if the shard stopped while waiting,
                ``mailbox_full`` if the instance cannot take more.
        """
        ...

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop the entities of ``shards`` (wait for their handlers if ``graceful``)."""
        ...


class Messenger:
    """Message routing and persisted-message completion for one process."""

    def __init__(
        self,
        config: CoveyConfig,
        storage: Storage,
        transport: RunnerTransport,
        sharding: Sharding,
        clock: Clock,
    ) -> None:
        self._options = config.sharding
        self._max_frame = config.transport.max_frame_bytes
        self._storage = storage
        self._transport = transport
        self._sharding = sharding
        self._clock = clock
        self.deliverer: Deliverer | None = None
        self._inflight: dict[int, asyncio.Future[Reply]] = {}
        self._inflight_shard: dict[int, ShardId] = {}
        self._retry_at: dict[int, float] = {}
        self._need_due = False
        self._completed: collections.OrderedDict[int, Reply] = collections.OrderedDict()
        self._read_wake = asyncio.Event()
        self._timers: list[float] = []
        self._timer_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._read_pending = 0
        self.on_completed: list[Callable[[Envelope, Reply, float], None]] = []
        sharding.listeners.append(self)

    # ---- lifecycle -------------------------------------------------------

    def start(self, tasks: asyncio.TaskGroup) -> None:
        if self._sharding.address is not None:
            tasks.create_task(self._read_loop(), name="covey-storage-read")
            tasks.create_task(self._timer_loop(), name="covey-delivery-timers")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    # ---- ShardListener ---------------------------------------------------

    async def shards_acquired(self, shards: dict[ShardId, int]) -> None:
        self._need_due = True  # delayed messages stored there: learn when they come due
        self.poke()

    async def shards_lost(self, shards: set[ShardId], *, graceful: bool) -> None:
        if self.deliverer is not None:
            await self.deliverer.stop_shards(shards, graceful=graceful)
        if graceful:
            # a handler that finished still has to store its reply: let it, before
            # the shard is released (else the next owner runs the message again)
            completing = [f for i, f in self._inflight.items()
                          if self._inflight_shard.get(i) in shards]
            if completing:
                await asyncio.wait(completing, timeout=self._options.shutdown_grace)

    def poke(self) -> None:
        """Read storage now (a wake-up arrived, or work waits there)."""
        self._read_wake.set()

    def resync(self) -> None:
        """Read storage now and re-learn due times (wake-ups may have been missed)."""
        self._need_due = True
        self.poke()

    # ---- outbound --------------------------------------------------------

    async def call(
        self, envelope: Envelope, *, timeout: float, discard: bool, transaction: Any = None
    ) -> Reply | None:
        """Deliver ``envelope`` and return its reply (``None`` when ``discard``).

        With ``transaction`` (an application's database connection inside a
        transaction) a persisted envelope is stored through that connection and
        runs only if it commits; the owner is woken at commit. Returns ``None``.
        A message :meth:`checked` refuses is neither sent nor stored.
        """
        self.checked(envelope.message)
        if transaction is not None:
            await self._save_in(transaction, envelope)
            return None
        deadline = self._clock.monotonic() + timeout
        if not envelope.persisted:
            return await self._call_volatile(envelope, deadline, discard)
        result = await self._with_retry(
            lambda: self._storage.messages.save_request(envelope.message), deadline
        )
        if isinstance(result, Duplicate):
            if result.reply is not None:
                return None if discard else result.reply
            envelope = Envelope(replace(envelope.message, id=result.original_id), persisted=True)
        if discard:
            await self._push_quietly(envelope)
            return None
        return await self._await_persisted(envelope, deadline)

    def checked(self, message: Message) -> Message:
        """``message``, once ``Message.check`` and the size limit (:func:`check_size`) pass."""
        message.check()
        check_size(message, self._max_frame)
        return message

    async def _save_in(self, transaction: Any, envelope: Envelope) -> None:
        messages = self._storage.messages
        if not envelope.persisted:
            raise EntityError("only persisted RPCs can be sent inside a transaction",
                              reason=Reason.INVALID_ARGUMENT)
        if not isinstance(messages, TransactionalMessages):
            raise EntityError(
                f"sending inside the application's transaction needs PostgreSQL "
                f"(this cluster uses {self._storage.backend})", reason=Reason.INVALID_ARGUMENT)
        await messages.save_requests_in(transaction, [envelope.message])

    async def _call_volatile(
        self, envelope: Envelope, deadline: float, discard: bool
    ) -> Reply | None:
        attempt = 0
        while True:
            owner = self._sharding.owner_of(envelope.shard)
            try:
                if owner is None:
                    raise EntityError("no runner serves this shard yet", reason=Reason.NOT_OWNER)
                if owner == self._sharding.address:
                    reply = await self.deliver_volatile(envelope)
                    return None if discard else reply
                body = {"k": "call", "e": envelope.to_wire()}
                if discard:
                    await self._transport.notify(owner, body)
                    return None
                answer = await self._transport.request(
                    owner, body, timeout=self._remaining(deadline)
                )
                return _reply_from(answer, envelope.message.id)
            except ClusterError as exc:
                if exc.reason not in _RETRY_REASONS:
                    raise
                attempt += 1
                await self._backoff(attempt, deadline, exc)

    async def _await_persisted(self, envelope: Envelope, deadline: float) -> Reply:
        # an owner we cannot reach still runs the message from storage: watch there too
        return await push_or_stored(
            self._push_persisted(envelope, deadline),
            lambda: self._stored_reply(envelope.message.id),
            self._clock, deadline, max_interval=self._options.poll_interval)

    async def _push_persisted(self, envelope: Envelope, deadline: float) -> Reply:
        attempt = 0
        pushed: set[RunnerAddress] = set()
        while True:
            owner = self._sharding.owner_of(envelope.shard)
            try:
                if owner is None:
                    raise EntityError("no runner serves this shard yet", reason=Reason.NOT_OWNER)
                if owner in pushed:
                    # Pushed there once already: it runs the message from storage when it
                    # holds the shard (and our copy may be stale: rescheduled since).
                    raise EntityError("waiting for the stored reply", reason=Reason.NOT_OWNER)
                pushed.add(owner)
                if owner == self._sharding.address:
                    return await self.process_persisted(envelope)
                answer = await self._transport.request(
                    owner, {"k": "push", "e": envelope.to_wire()},
                    timeout=self._remaining(deadline),
                )
                return _reply_from(answer, envelope.message.id)
            except ClusterError as exc:
                if exc.reason not in _RETRY_REASONS and exc.reason is not Reason.TIMEOUT:
                    raise
                stored = await self._stored_reply(envelope.message.id)
                if stored is not None:
                    return stored
                attempt += 1
                await self._backoff(attempt, deadline, exc)

    async def _stored_reply(self, request_id: int) -> Reply | None:
        try:
            return (await self._storage.messages.replies_for([request_id])).get(request_id)
        except StorageError:
            return None

    async def _push_quietly(self, envelope: Envelope) -> None:
        owner = self._sharding.owner_of(envelope.shard)
        if owner == self._sharding.address:
            self._spawn(self._process_quietly(envelope))
        elif owner is not None:
            with contextlib.suppress(ClusterError):
                await self._transport.notify(owner, {"k": "wake", "e": envelope.to_wire()})

    async def _backoff(self, attempt: int, deadline: float, cause: ClusterError) -> None:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise EntityError(
                f"call timed out (last error: {cause})", reason=Reason.TIMEOUT,
                last_reason=cause.reason.value,
            ) from cause
        if cause.reason is Reason.PEER_UNAVAILABLE:
            self._sharding.wake()
        # short: the new owner usually takes over within one membership interval
        delay = min(0.005 * (2 ** min(attempt, 5)), 0.1, remaining)
        await self._sharding.wait_for_change(delay)

    async def _with_retry(self, action: Callable[[], Any], deadline: float) -> Any:
        attempt = 0
        while True:
            try:
                return await action()
            except StorageError as exc:
                if not exc.retryable:
                    raise
                attempt += 1
                await self._backoff(attempt, deadline, exc)

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise EntityError("call timed out", reason=Reason.TIMEOUT)
        return remaining

    # ---- inbound ---------------------------------------------------------

    async def handle_request(self, peer: RunnerAddress | None, body: Body) -> Body:
        """The transport's request handler."""
        try:
            kind = body.get("k")
            if kind == "call":
                reply = await self.deliver_volatile(Envelope.from_wire(body.get("e")))
            elif kind == "push":
                reply = await self.process_persisted(Envelope.from_wire(body.get("e")))
            elif kind == "ping":
                return {"ok": True}
            else:
                raise EntityError(f"unknown request kind {kind!r}", reason=Reason.INVALID_ARGUMENT)
        except ClusterError as exc:
            return {"ok": False, "r": exc.reason.value, "m": str(exc),
                    "d": {k: v for k, v in exc.details.items() if isinstance(v, str | int)}}
        return {"ok": True, "p": reply.payload, "x": reply.is_error}

    async def handle_notify(self, peer: RunnerAddress | None, body: Body) -> None:
        """The transport's notification handler."""
        kind = body.get("k")
        try:
            if kind == "call":
                await self.deliver_volatile(Envelope.from_wire(body.get("e")))
            elif kind == "wake":
                self._spawn(self._process_quietly(Envelope.from_wire(body.get("e"))))
            elif kind == "wake_many":
                wires = body.get("e")
                for wire in wires if isinstance(wires, list) else ():
                    self._spawn(self._process_quietly(Envelope.from_wire(wire)))
            elif kind == "leaving":
                self._sharding.wake()
        except ClusterError as exc:
            log.info("dropped a notification (%s): %s", kind, exc)

    async def deliver_volatile(self, envelope: Envelope) -> Reply:
        if self._sharding.epoch_of(envelope.shard) is None:
            raise self._not_here(envelope.shard)
        answer = await self._deliverer().deliver(envelope)
        if isinstance(answer, Reschedule):
            raise EntityError("a volatile request cannot be rescheduled",
                              reason=Reason.INVALID_ARGUMENT)
        return answer

    async def process_persisted(self, envelope: Envelope) -> Reply:
        """Run a stored message here, once, and complete it with a fenced write."""
        message_id = envelope.message.id
        done = self._completed.get(message_id)
        if done is not None:
            return done
        running = self._inflight.get(message_id)
        if running is not None:
            return await asyncio.shield(running)
        epoch = self._sharding.epoch_of(envelope.shard)
        if epoch is None:
            raise self._not_here(envelope.shard)
        due = max(envelope.message.deliver_at or 0.0, self._retry_at.get(message_id, 0.0)) or None
        if due is not None and due > self._clock.now():
            self.schedule(due)
            raise EntityError("message is not due yet", reason=Reason.NOT_OWNER)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[message_id] = future
        self._inflight_shard[message_id] = envelope.shard
        try:
            reply = await self._run_and_complete(envelope, epoch)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.set_exception(self._not_here(envelope.shard))
            else:
                future.set_exception(exc)
            future.exception()  # retrieved: waiters may be gone
            raise
        else:
            future.set_result(reply)
            return reply
        finally:
            del self._inflight[message_id]
            del self._inflight_shard[message_id]

    async def _run_and_complete(self, envelope: Envelope, epoch: int) -> Reply:
        started = self._clock.monotonic()
        while True:
            try:
                answer = await self._deliverer().deliver(envelope)
                break
            except EntityError as exc:
                if exc.reason is not Reason.MAILBOX_FULL:
                    raise
                # persisted overflow waits (it is stored) instead of failing
                await self._clock.sleep(0.01)
        if isinstance(answer, Reschedule):
            await self._reschedule(envelope, epoch, answer)
            raise EntityError("the attempt failed; the message runs again later",
                              reason=Reason.NOT_OWNER)
        reply = answer
        try:
            await self._storage.messages.save_reply(reply, Fence(envelope.shard, epoch))
        except AlreadyProcessed:
            stored = await self._stored_reply(envelope.message.id)
            reply = stored or reply
        except FencedOut:
            await self._sharding.fenced([envelope.shard])
            raise self._not_here(envelope.shard) from None
        self._remember(reply)
        for callback in self.on_completed:
            callback(envelope, reply, self._clock.monotonic() - started)
        return reply

    async def _reschedule(self, envelope: Envelope, epoch: int, retry: Reschedule) -> None:
        try:
            await self._storage.messages.reschedule(
                envelope.message.id, deliver_at=retry.deliver_at, error=retry.error,
                fence=Fence(envelope.shard, epoch))
        except FencedOut:
            await self._sharding.fenced([envelope.shard])
            raise self._not_here(envelope.shard) from None
        self.schedule(retry.deliver_at)
        # a pushed copy of this message (sent before the retry) must not run early
        self._retry_at[envelope.message.id] = retry.deliver_at
        while len(self._retry_at) > self._options.processed_cache:
            self._retry_at.pop(next(iter(self._retry_at)))

    async def complete(self, shard: ShardId, reply: Reply) -> None:
        """Complete a stored message of a shard this runner holds (fenced)."""
        epoch = self._sharding.epoch_of(shard)
        if epoch is None:
            raise self._not_here(shard)
        try:
            await self._storage.messages.save_reply(reply, Fence(shard, epoch))
        except AlreadyProcessed:
            return
        except FencedOut:
            await self._sharding.fenced([shard])
            raise self._not_here(shard) from None
        self._remember(reply)

    def has_owner(self, shard: ShardId) -> bool:
        """Whether some live runner is assigned ``shard`` (a call could be answered)."""
        return self._sharding.owner_of(shard) is not None

    async def rerun(self, message_id: int) -> None:
        """Reset a stored message of a shard held here and run it again (forgetting
        any cached reply: a dead-letter retry, a workflow resume)."""
        self._completed.pop(message_id, None)
        self._retry_at.pop(message_id, None)
        await self._storage.messages.reset_request(message_id)
        message = await self._storage.messages.get(message_id)
        if message is not None:
            self._spawn(self._process_quietly(Envelope(message, persisted=True)))

    async def push_many(self, envelopes: list[Envelope]) -> None:
        """Wake the owners of stored envelopes, one notification per owner."""
        by_owner: dict[RunnerAddress, list[Envelope]] = {}
        for envelope in envelopes:
            owner = self._sharding.owner_of(envelope.shard)
            if owner is not None:
                by_owner.setdefault(owner, []).append(envelope)
        for owner, batch in by_owner.items():
            if owner == self._sharding.address:
                for envelope in batch:
                    self._spawn(self._process_quietly(envelope))
                continue
            with contextlib.suppress(ClusterError):
                await self._transport.notify(
                    owner, {"k": "wake_many", "e": [e.to_wire() for e in batch]})

    async def wait_for_reply(self, envelope: Envelope, *, timeout: float) -> Reply:
        """Wait for a stored message's reply (push to its owner, fall back to storage)."""
        return await self._await_persisted(envelope, self._clock.monotonic() + timeout)

    async def _process_quietly(self, envelope: Envelope) -> None:
        try:
            await self.process_persisted(envelope)
        except ClusterError as exc:
            log.debug("message %s not processed here: %s", envelope.message.id, exc)

    def _remember(self, reply: Reply) -> None:
        self._completed[reply.request_id] = reply
        while len(self._completed) > self._options.processed_cache:
            self._completed.popitem(last=False)

    def _not_here(self, shard: ShardId) -> EntityError:
        reason = Reason.SHUTTING_DOWN if self._sharding.shutting_down else Reason.NOT_OWNER
        return EntityError(f"shard {shard} is not served by this runner", reason=reason,
                           shard=str(shard))

    def _deliverer(self) -> Deliverer:
        if self.deliverer is None:
            raise EntityError("this process hosts no entities", reason=Reason.NOT_OWNER)
        return self.deliverer

    # ---- storage reads ---------------------------------------------------

    def schedule(self, due: float) -> None:
        """Read storage again at ``due`` (a delayed message comes due then)."""
        if not isinstance(due, int | float) or not math.isfinite(due):  # could never sleep
            log.warning("ignored a delivery timer for %r: not a finite time", due)
            return
        heapq.heappush(self._timers, due)
        self._timer_wake.set()

    async def _timer_loop(self) -> None:
        while True:
            if not self._timers:
                self._timer_wake.clear()
                await self._timer_wake.wait()
                continue
            delay = self._timers[0] - self._clock.now()
            if delay > 0:
                self._timer_wake.clear()
                await sleep_or_wake(self._clock, self._timer_wake, min(delay, _MAX_TIMER_SLEEP))
                continue
            while self._timers and self._timers[0] <= self._clock.now():
                heapq.heappop(self._timers)
            self.poke()

    async def _read_loop(self) -> None:
        while True:
            await sleep_or_wake(self._clock, self._read_wake, self._options.poll_interval)
            if not self._read_wake.is_set():
                self._need_due = True  # the safety poll also re-learns due times
            self._read_wake.clear()
            try:
                await self._read_once()
            except StorageError as exc:
                log.warning("storage read failed: %s", exc)

    async def _read_once(self) -> None:
        batch_size = self._options.poll_batch
        while True:
            shards = [s for s in self._sharding.owned if self._sharding.epoch_of(s) is not None]
            if not shards or self._read_pending >= batch_size:
                return
            messages = await self._storage.messages.unprocessed(shards, limit=batch_size)
            for message in messages:
                if message.id in self._inflight or message.id in self._completed:
                    continue
                self._read_pending += 1
                self._spawn(self._process_read(Envelope(message, persisted=True, read=True)))
            if len(messages) < batch_size:
                if self._need_due:
                    self._need_due = False
                    due = await self._storage.messages.next_due(shards)
                    if due is not None:
                        self.schedule(due)
                return

    async def _process_read(self, envelope: Envelope) -> None:
        try:
            await self._process_quietly(envelope)
        finally:
            self._read_pending -= 1
            if self._read_pending == 0:
                self.poke()  # a full batch drained: see if more is waiting

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _reply_from(answer: Body, request_id: int) -> Reply:
    if answer.get("ok"):
        payload = answer.get("p")
        if not isinstance(payload, bytes):
            raise TransportError("malformed reply from peer", reason=Reason.REMOTE_FAILURE)
        return Reply(request_id, payload, bool(answer.get("x")))
    try:
        reason = Reason(str(answer.get("r")))
    except ValueError:
        reason = Reason.REMOTE_FAILURE
    details = answer.get("d") if isinstance(answer.get("d"), dict) else {}
    raise error_for(reason, str(answer.get("m", "")), dict(details or {}))

