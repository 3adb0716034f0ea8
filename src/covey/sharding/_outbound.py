"""Outbound routing: a message to its shard's owner, retried until its deadline.

A volatile call goes to the owner over the transport (or straight to the local
deliverer), retrying while no runner serves the shard, the owner says "not
here" or cannot be reached. A persisted call is stored first (deduplicated: a
primary key stored before with another payload is an ``idempotency_conflict``);
then the envelope itself is pushed to the owner, which runs it at once and
answers its reply. Meanwhile the caller also watches storage for the reply and
pushes again when ownership changes: an owner the push cannot reach still finds
the message through its storage read (:mod:`._reply_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from covey.core import (
    Clock,
    ClusterError,
    CoveyConfig,
    EntityError,
    Reason,
    RunnerAddress,
    ShardId,
    StorageError,
)
from covey.sharding._completion import Completion, NotYet
from covey.sharding._envelope import Envelope, check_size
from covey.sharding._reply_watch import push_or_stored
from covey.sharding._sharding import Sharding
from covey.sharding._wire import (
    call_body,
    push_body,
    read_answer,
    wake_body,
    wake_many_body,
)
from covey.sharding.transport import RunnerTransport
from covey.storage import Duplicate, Message, Reply, Storage, TransactionalMessages

T = TypeVar("T")
#: wakes in one coalesced frame at most (a frame of stored messages, each already
#: within the frame limit on its own, stays far below it)
_SOON_FRAME = 256

_RETRY_REASONS = frozenset({
    Reason.NOT_OWNER, Reason.PEER_UNAVAILABLE, Reason.SHUTTING_DOWN, Reason.STORAGE_UNAVAILABLE,
})
#: the assignment gives the shard to nobody yet (no runner serves its group)
NO_OWNER = NotYet("no runner serves this shard yet")
#: pushed to this owner already: it runs the message from storage when it holds
#: the shard (and our copy may be stale: rescheduled since)
PUSHED = NotYet("waiting for the stored reply")


class Outbound:
    """Sends messages to their owners for one process (runner or client-only).

    Args:
        config: the sharding options and the frame limit.
        storage: where persisted messages are stored first.
        transport: reaches the owners.
        sharding: who owns which shard.
        clock: the time source of the deadlines.
        completion: runs a message whose owner is this runner.
        spawn: runs a local delivery as a task of the messenger's set.
    """

    def __init__(self, config: CoveyConfig, storage: Storage, transport: RunnerTransport,
                 sharding: Sharding, clock: Clock, completion: Completion,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._options = config.sharding
        self._max_frame = config.transport.max_frame_bytes
        self._storage = storage
        self._transport = transport
        self._sharding = sharding
        self._clock = clock
        self._completion = completion
        self._spawn = spawn
        self._soon: dict[RunnerAddress, list[Envelope]] = {}

    async def call(
        self, envelope: Envelope, *, timeout: float, discard: bool, transaction: Any = None
    ) -> Reply | None:
        """See :meth:`covey.sharding.runtime.Messenger.call`."""
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
            if result.original_id != envelope.message.id:
                await self._same_request_or_conflict(envelope.message, result.original_id,
                                                     deadline)
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

    def fits(self, message: Message) -> Message:
        """``message``, once the size limit (:func:`check_size`) passes."""
        check_size(message, self._max_frame)
        return message

    def has_owner(self, shard: ShardId) -> bool:
        """Whether some live runner is assigned ``shard`` (a call could be answered)."""
        return self._sharding.owner_of(shard) is not None

    async def wait_for_reply(self, envelope: Envelope, *, timeout: float) -> Reply:
        """Wait for a stored message's reply (push to its owner, fall back to storage)."""
        return await self._await_persisted(envelope, self._clock.monotonic() + timeout)

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
                    self._spawn(self._completion.run_quietly(envelope))
                continue
            with contextlib.suppress(ClusterError):
                await self._transport.notify(owner, wake_many_body(batch))

    def push_soon(self, envelopes: list[Envelope]) -> None:
        """Like :meth:`push_many`, but the notification leaves on the loop's next turn,
        together with every other ``push_soon`` to the same owner made in this one.

        A burst of concurrent single sends (their stores finish in one group commit
        and they all push at once) then costs one frame per owner instead of one
        per message. For callers that ask the owner nothing right after: a request
        sent at once may reach the owner before this wake.
        """
        for envelope in envelopes:
            owner = self._sharding.owner_of(envelope.shard)
            if owner is None:
                continue
            if owner == self._sharding.address:
                self._spawn(self._completion.run_quietly(envelope))
                continue
            queue = self._soon.setdefault(owner, [])
            queue.append(envelope)
            if len(queue) == 1:
                self._spawn(self._flush_soon(owner))

    async def _flush_soon(self, owner: RunnerAddress) -> None:
        await asyncio.sleep(0)  # the other pushes of this turn join the frame
        batch = self._soon.pop(owner, [])
        for start in range(0, len(batch), _SOON_FRAME):
            with contextlib.suppress(ClusterError):
                await self._transport.notify(
                    owner, wake_many_body(batch[start:start + _SOON_FRAME]))

    # ---- volatile ----------------------------------------------------------

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
            cause: ClusterError | NotYet = NO_OWNER
            if owner is not None:
                try:
                    if owner == self._sharding.address:
                        reply = await self._completion.deliver_volatile(envelope)
                        return None if discard else reply
                    body = call_body(envelope)
                    if discard:
                        await self._transport.notify(owner, body)
                        return None
                    answer = await self._transport.request(
                        owner, body, timeout=self._remaining(deadline)
                    )
                    result = read_answer(answer, envelope.message.id)
                    if isinstance(result, Reply):
                        return result
                    cause = result  # not an answer to a call; retried as before
                except ClusterError as exc:
                    if exc.reason not in _RETRY_REASONS:
                        raise
                    cause = exc
            attempt += 1
            await self._backoff(attempt, deadline, cause)

    # ---- persisted ---------------------------------------------------------

    async def _same_request_or_conflict(self, message: Message, original_id: int,
                                        deadline: float) -> None:
        """Refuse a request whose primary key was stored with another payload.

        Only on the duplicate path (one extra read): the key then stands for the
        stored request, and answering this one with that one's reply would lie.
        A stored message gone meanwhile (purged with its reply) is no evidence.
        """
        if message.primary_key is None:
            return
        stored = await self._with_retry(lambda: self._storage.messages.get(original_id),
                                        deadline)
        if stored is None or (stored.tag == message.tag and stored.payload == message.payload):
            return
        address = message.address
        raise EntityError(
            f"{address.entity_type}.{message.tag}: primary key {message.primary_key!r} was "
            f"used before with another payload (request {original_id}); use a new key for "
            "a new request", reason=Reason.IDEMPOTENCY_CONFLICT,
            entity_type=address.entity_type, entity_id=address.entity_id, rpc=message.tag,
            primary_key=message.primary_key, original_id=original_id)

    async def _await_persisted(self, envelope: Envelope, deadline: float) -> Reply:
        # an owner we cannot reach still runs the message from storage: watch there too
        return await push_or_stored(
            self._push_persisted(envelope, deadline),
            lambda: self._completion.stored_reply(envelope.message.id),
            self._clock, deadline, max_interval=self._options.poll_interval)

    async def _push_persisted(self, envelope: Envelope, deadline: float) -> Reply:
        attempt = 0
        pushed: set[RunnerAddress] = set()
        while True:
            owner = self._sharding.owner_of(envelope.shard)
            cause: ClusterError | NotYet = NO_OWNER if owner is None else PUSHED
            if owner is not None and owner not in pushed:
                pushed.add(owner)
                try:
                    if owner == self._sharding.address:
                        result = await self._completion.process(envelope)
                    else:
                        answer = await self._transport.request(
                            owner, push_body(envelope), timeout=self._remaining(deadline),
                        )
                        result = read_answer(answer, envelope.message.id)
                    if isinstance(result, Reply):
                        return result
                    cause = result
                except ClusterError as exc:
                    if exc.reason not in _RETRY_REASONS and exc.reason is not Reason.TIMEOUT:
                        raise
                    cause = exc
            stored = await self._completion.stored_reply(envelope.message.id)
            if stored is not None:
                return stored
            attempt += 1
            await self._backoff(attempt, deadline, cause)

    async def _push_quietly(self, envelope: Envelope) -> None:
        owner = self._sharding.owner_of(envelope.shard)
        if owner == self._sharding.address:
            self._spawn(self._completion.run_quietly(envelope))
        elif owner is not None:
            with contextlib.suppress(ClusterError):
                await self._transport.notify(owner, wake_body(envelope))

    # ---- waiting -----------------------------------------------------------

    async def _backoff(self, attempt: int, deadline: float, cause: ClusterError | NotYet) -> None:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            if isinstance(cause, NotYet):
                # these were not_owner errors once: last_reason stays what callers saw
                raise EntityError(
                    f"call timed out (last error: {cause.why})", reason=Reason.TIMEOUT,
                    last_reason=Reason.NOT_OWNER.value)
            raise EntityError(
                f"call timed out (last error: {cause})", reason=Reason.TIMEOUT,
                last_reason=cause.reason.value,
            ) from cause
        if isinstance(cause, ClusterError) and cause.reason is Reason.PEER_UNAVAILABLE:
            self._sharding.wake()
        # short: the new owner usually takes over within one membership interval
        delay = min(0.005 * (2 ** min(attempt, 5)), 0.1, remaining)
        await self._sharding.wait_for_change(delay)

    async def _with_retry(self, action: Callable[[], Coroutine[Any, Any, T]],
                          deadline: float) -> T:
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
