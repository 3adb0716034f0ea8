"""EventRunner: runs the deliveries of the subscriber groups a runner owns.

It is the deliverer of ``covey.Event`` messages (one per event and group, to
the entity ``<group>/<key>``). Per key, one delivery at a time, in order
(:class:`~covey.events._lane.Lane`); per group at most ``concurrency`` handler
runs at once on this runner, across keys.

A handler that raises is retried **in place** with backoff: its key waits,
the group's other keys flow. Every attempt has a unit of work of its own
(what a failed attempt staged is discarded); the attempt that succeeds commits
its effects with the delivery's completion, fenced by the shard's epoch.
After the last attempt the delivery is completed with an error reply marked
dead (the group's dead-letter) and **the key moves on** to its next event: a
poison event does not stop its key for ever (``covey events dlq retry`` runs it
again later). Starts are recorded (``mark_started``), so attempts count across
crashes. A stored event this code cannot read (a newer version, a payload that
no longer validates) is dead-lettered at once, and stays in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from covey.core import (
    AlreadyProcessed,
    Clock,
    ClusterError,
    ClusterPlacement,
    EntityAddress,
    EntityError,
    FencedOut,
    MsgpackCodec,
    Reason,
    RequestContext,
    ShardId,
    metrics,
    use_context,
)
from covey.core.runtime import TaskSet, consumer_span, sleep_or_wake, traced_context
from covey.events._context import EventContext, Stager
from covey.events._event import Event, decode_event
from covey.events._events import RETRY_TAG
from covey.events._lane import Lane
from covey.events._publisher import (
    EVENT_ID_HEADER,
    KEY_HEADER,
    POSITION_HEADER,
    PUBLISHED_HEADER,
    TOPIC_HEADER,
    TYPE_HEADER,
    VERSION_HEADER,
)
from covey.events._subscription import Subscription
from covey.sharding.runtime import Completed, Deferred, Envelope, Reschedule, StartRecords
from covey.storage import Fence, Message, MessageStorage, Reply, UnitOfWork

log = logging.getLogger("covey.events")

#: how many stored deliveries of a key one backlog read takes
BACKLOG_LIMIT = 500
#: seconds before a delivery of a group this runner does not subscribe is tried again
UNKNOWN_GROUP_DELAY = 5.0
#: seconds a drained lane waits for its key's next event before it closes
LINGER = 2.0
#: deliveries one key's lane holds in memory; more stay stored, read back in turn
LANE_CAPACITY = 1000


class ShardFences(Protocol):
    """The epochs that fence the runner's completions (the runner's Sharding)."""

    def epoch_of(self, shard: ShardId) -> int | None: ...

    async def fenced(self, shards: set[ShardId]) -> None: ...


@dataclass
class _Group:
    slots: asyncio.Semaphore
    by_topic: dict[str, Subscription] = field(default_factory=dict)


class EventRunner:
    """The deliverer of ``covey.Event`` envelopes on one runner.

    Args:
        clock: time source (backoff sleeps).
        runner_id: this runner's address (the handlers' request context shows it).
        messages: where completions, start records and backlogs are.
        fences: the epochs of the shards held here.
        stage: stages the events of ``ctx.publish`` on a unit of work.
        tasks: the set every key lane's worker runs in.
        rerun: resets a stored delivery and runs it again here (a dead-letter retry).
        wake: wakes the owners of the messages a delivery's commit stored (what its
            handler published or sent).
        grace: seconds a graceful shard stop waits for the deliveries under way.
    """

    def __init__(self, clock: Clock, runner_id: str | None, messages: MessageStorage,
                 fences: ShardFences, stage: Stager | None, *, tasks: TaskSet,
                 rerun: Callable[[int], Awaitable[None]] | None = None,
                 wake: Callable[[list[Message]], None] | None = None,
                 grace: float = 15.0) -> None:
        self._clock = clock
        self._runner_id = runner_id
        self._messages = messages
        self._fences = fences
        self._stage = stage
        self._rerun = rerun
        self._wake = wake
        self._tasks = tasks
        self.grace = grace
        self._codec = MsgpackCodec()
        self.groups: dict[str, _Group] = {}
        self.lanes: dict[EntityAddress, Lane] = {}
        self._starts = StartRecords(messages.mark_started, tasks, "event handler")

    def add(self, subscription: Subscription) -> None:
        group = self.groups.setdefault(subscription.group,
                                       _Group(asyncio.Semaphore(subscription.concurrency)))
        if subscription.topic in group.by_topic:
            raise ClusterError(f"group {subscription.group!r} subscribes to topic "
                               f"{subscription.topic!r} twice", reason=Reason.INVALID_ARGUMENT,
                               field="group")
        group.by_topic[subscription.topic] = subscription

    @property
    def subscriptions(self) -> list[Subscription]:
        return [s for g in self.groups.values() for s in g.by_topic.values()]

    # ---- delivery --------------------------------------------------------

    async def deliver(self, envelope: Envelope,
                      unit: UnitOfWork | None = None
                      ) -> Reply | Reschedule | Completed | Deferred:
        """Run a delivery in its key's turn; ``Completed`` with its reply (the lane
        stored it, fenced). ``unit`` stays unused: each attempt has a unit of its
        own.

        A delivery of a group (or topic) this runner does not subscribe is
        rescheduled: during a rolling deploy that adds a group, the runners that
        do not know it yet leave its deliveries to the new ones.
        """
        message = envelope.message
        if not envelope.persisted:
            return await self._control(message)
        group = self.groups.get(message.address.entity_id.split("/", 1)[0])
        if group is None or message.headers.get(TOPIC_HEADER) not in group.by_topic:
            return Reschedule(self._clock.now() + UNKNOWN_GROUP_DELAY,
                              f"{message.address.entity_id.split('/', 1)[0]!r} does not "
                              f"subscribe to {message.headers.get(TOPIC_HEADER)!r} here")
        if self._fences.epoch_of(message.address.shard) is None:
            raise _not_here(message.address.shard)
        lane = self.lanes.get(message.address)
        if lane is None:
            lane = self.lanes[message.address] = Lane(message.address)
            future = lane.offer(message)
            lane.task = self._tasks.spawn(self._work(lane), name="covey-event-lane")
        elif len(lane.pending) >= LANE_CAPACITY and message.id not in lane.pending:
            # bounded: the delivery stays stored; the lane reads its backlog again once
            # it has drained what it holds
            lane.truncated = True
            return Deferred()
        else:
            future = lane.offer(message)
        return Completed(await asyncio.shield(future))

    async def _control(self, message: Message) -> Reply:
        """A volatile request about a delivery of a key owned here: run a dead one
        again (``cluster.events.retry_dead``)."""
        if message.tag != RETRY_TAG or self._rerun is None:
            raise EntityError("events are delivered by persisted messages only",
                              reason=Reason.INVALID_ARGUMENT)
        target: int = self._codec.decode(message.payload, int)
        lane = self.lanes.get(message.address)
        if lane is not None:
            lane.done.pop(target, None)
        await self._rerun(target)
        return Reply(message.id, self._codec.encode(True))

    async def _work(self, lane: Lane) -> None:
        try:
            await self._load(lane, first=True)
            while True:
                message = lane.next()
                if message is not None and lane.unsure(message):
                    # its wake-up may have overtaken an older event's: read the backlog
                    # (the older one runs first if stored; if not, it never committed
                    # or ran elsewhere, and this one goes now)
                    await self._load(lane, first=False)
                    lane.loaded.add(message.id)
                    message = lane.next()
                if message is None:
                    if lane.truncated and not lane.stopping:
                        await self._load(lane, first=False)
                        if lane.pending:
                            continue
                    if lane.stopping:
                        break
                    lane.arrived.clear()  # linger: the key's next event is likely near
                    await sleep_or_wake(self._clock, lane.arrived, LINGER)
                    if lane.pending and not lane.stopping:
                        continue
                    break
                lane.finish(message.id, await self._run(message))
            lane.fail(_not_here(lane.address.shard))  # stopping: the next owner runs them
        except BaseException as exc:
            lane.fail(exc if isinstance(exc, ClusterError) else _not_here(lane.address.shard))
            if not isinstance(exc, ClusterError | asyncio.CancelledError):
                log.exception("the lane of %s failed", lane.address)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if self.lanes.get(lane.address) is lane:
                del self.lanes[lane.address]

    async def _load(self, lane: Lane, *, first: bool) -> None:
        """Read the key's stored backlog; a delivery offered before it that is not in
        a complete backlog is finished already (its stored reply is returned)."""
        backlog = await self._messages.unprocessed_of(lane.address, limit=BACKLOG_LIMIT)
        lane.truncated = len(backlog) >= BACKLOG_LIMIT
        stored = {m.id for m in backlog}
        if first and not lane.truncated:
            gone = [i for i in lane.pending if i not in stored]
            if gone:
                replies = await self._messages.replies_for(gone)
                for message_id, reply in replies.items():
                    lane.finish(message_id, reply)
        for message in backlog:
            lane.merge(message)
            lane.loaded.add(message.id)

    async def _run(self, message: Message) -> Reply:
        """Every attempt of one delivery, then its completion; its reply."""
        group_name = message.address.entity_id.split("/", 1)[0]
        headers = message.headers
        group = self.groups.get(group_name)
        subscription = None if group is None else group.by_topic.get(headers.get(TOPIC_HEADER, ""))
        if subscription is None:
            return await self._dead(message, 0, f"group {group_name!r} does not subscribe to "
                                    f"topic {headers.get(TOPIC_HEADER)!r} on this runner")
        cls = subscription.classes.get(headers.get(TYPE_HEADER, message.tag))
        if cls is None:
            return await self._dead(message, 0, f"group {group_name!r} handles no event type "
                                    f"{headers.get(TYPE_HEADER, message.tag)!r}")
        try:
            event = decode_event(cls, message.payload, int(headers.get(VERSION_HEADER, "1")))
        except (ClusterError, ValueError) as exc:
            return await self._dead(message, 0, f"{type(exc).__name__}: {exc}")
        attempt = max(message.starts, message.failures) + 1
        errors: list[str] = []
        while True:
            outcome = await self._attempt(subscription, message, event, attempt)
            if isinstance(outcome, Reply):
                metrics.EVENTS_HANDLED.labels(group_name, "done").inc()
                return outcome
            errors.append(f"{type(outcome).__name__}: {outcome}")
            if not subscription.retry.should_retry(outcome, attempt):
                log.warning("event %s of group %s dead after attempt %d: %s",
                            headers.get(EVENT_ID_HEADER), group_name, attempt, errors[-1])
                return await self._dead(message, attempt, errors[-1], errors)
            metrics.EVENTS_HANDLED.labels(group_name, "retried").inc()
            delay = subscription.retry.delay(attempt)
            log.info("event %s of group %s attempt %d failed (%s); retry in %.2f s",
                     headers.get(EVENT_ID_HEADER), group_name, attempt, errors[-1], delay)
            await self._clock.sleep(delay)
            attempt += 1

    async def _attempt(self, subscription: Subscription, message: Message, event: Event,
                       attempt: int) -> Reply | Exception:
        """One run of the handler with a fresh unit of work, committed on success;
        the exception of a failed attempt (nothing of it is kept)."""
        fence = self._fence(message.address.shard)
        self._started(message.id)
        unit = self._messages.unit(fence, message.id)
        ctx = self._context(subscription, message, attempt, unit)
        slots = self.groups[subscription.group].slots
        try:
            async with slots:
                with consumer_span(f"handle {subscription.topic} {subscription.group}",
                                   message.headers, link=True) as span:
                    with use_context(ctx.context):
                        try:
                            await subscription.fn(event, ctx)
                        except Exception as exc:
                            span.fail(f"{type(exc).__name__}: {exc}", exc)
                            return exc
            reply = Reply(message.id, self._codec.encode({"state": "done", "attempt": attempt}))
            try:
                await unit.commit(reply)
                sent = unit.sent
                if sent and self._wake is not None:
                    self._wake(sent)
            except AlreadyProcessed:
                return (await self._messages.replies_for([message.id])).get(message.id, reply)
            except FencedOut:
                await self._fences.fenced({message.address.shard})
                raise _not_here(message.address.shard) from None
            except ClusterError as exc:  # an application write refused, the store failed
                if exc.reason is Reason.INVALID_ARGUMENT:
                    raise
                return exc
            return reply
        finally:
            await unit.discard()  # a no-op after a commit

    def _context(self, subscription: Subscription, message: Message, attempt: int,
                 unit: UnitOfWork) -> EventContext:
        headers = message.headers
        placement = ClusterPlacement(runner_id=self._runner_id,
                                     shard_id=str(message.address.shard),
                                     entity=f"{message.address.entity_type}/"
                                            f"{message.address.entity_id}")
        position = headers.get(POSITION_HEADER)
        return EventContext(
            event_id=int(headers.get(EVENT_ID_HEADER, "0")), key=headers.get(KEY_HEADER, ""),
            group=subscription.group, topic=subscription.topic,
            type=headers.get(TYPE_HEADER, message.tag),
            version=int(headers.get(VERSION_HEADER, "1")),
            published_at=float(headers.get(PUBLISHED_HEADER, "0")),
            position=None if position is None else int(position), attempt=attempt,
            max_attempts=subscription.retry.max_attempts,
            context=traced_context(RequestContext.from_headers(headers, placement)),
            unit=unit, stage=self._stage)

    async def _dead(self, message: Message, attempt: int, error: str,
                    errors: list[str] | None = None) -> Reply:
        """Complete the delivery as dead (the group's dead-letter); the key moves on."""
        group = message.address.entity_id.split("/", 1)[0]
        metrics.EVENTS_HANDLED.labels(group, "dead").inc()
        reply = Reply(message.id, self._codec.encode({
            "state": "dead", "error": error, "attempt": attempt, "errors": errors or [error],
            "reason": Reason.HANDLER_FAILED.value}), is_error=True)
        try:
            await self._messages.save_reply(reply, self._fence(message.address.shard))
        except AlreadyProcessed:
            stored = (await self._messages.replies_for([message.id])).get(message.id)
            return stored or reply
        except FencedOut:
            await self._fences.fenced({message.address.shard})
            raise _not_here(message.address.shard) from None
        return reply

    def _fence(self, shard: ShardId) -> Fence:
        epoch = self._fences.epoch_of(shard)
        if epoch is None:
            raise _not_here(shard)
        return Fence(shard, epoch)

    # ---- start records ---------------------------------------------------

    def _started(self, message_id: int) -> None:
        self._starts.started(message_id)

    # ---- stopping --------------------------------------------------------

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop the lanes of ``shards``: a graceful stop lets the delivery under way
        finish (within the grace) and starts no other; then they are cancelled.
        What was not completed runs on the next owner."""
        lanes = [lane for lane in self.lanes.values() if lane.address.shard in shards]
        tasks = [lane.task for lane in lanes if lane.task is not None]
        for lane in lanes:
            lane.stopping = True
            lane.arrived.set()  # a lingering lane ends now
        if tasks and graceful:
            await asyncio.wait(tasks, timeout=self.grace)
        for task in tasks:
            task.cancel()

    async def close(self) -> None:
        """Finish recording starts (5 s at most), then cancel what is left."""
        await self._starts.flush()
        await self._tasks.close()


def _not_here(shard: ShardId) -> EntityError:
    return EntityError(f"shard {shard} is not served by this runner", reason=Reason.NOT_OWNER,
                       shard=str(shard))
