"""EntityRuntime: the live entity instances of one runner.

One instance per address, created on its first message (``on_start``), dropped
after ``max_idle`` without requests unless ``keep_alive`` (``on_stop``). Each
instance runs at most ``concurrency`` handlers at once and holds at most
``mailbox_capacity`` requests (running + waiting). A handler that raises fails
that request only: the caller gets a typed error carrying the exception's type
and message, and the instance keeps serving. (A persisted handler that meets a
retryable storage failure is no answer: its message runs again.)

An entity with durable state (``state=``) is loaded on activation; its
persisted runs stage their state change on the run's unit of work and hold the
instance until the unit ends (:mod:`covey.entities._state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from covey.core import (
    REQUEST_HEADER,
    TENANT_HEADER,
    Clock,
    ClusterError,
    ClusterPlacement,
    EntityAddress,
    EntityError,
    MsgpackCodec,
    Reason,
    RequestContext,
    RunnerAddress,
    ShardId,
    StorageError,
    metrics,
    use_context,
)
from covey.core.runtime import being_cancelled, consumer_span, traced_context
from covey.entities._call import CURRENT_RUN, EventStager, HandlerRun, OutboxFactory
from covey.entities._definition import Entity, EntityContext, RpcSpec, add_entity_type
from covey.entities._state import DurableState, StateUnreadable
from covey.sharding.runtime import Envelope, error_payload
from covey.storage import Message, Reply, StateStore, UnitOfWork

log = logging.getLogger("covey.entities")



@dataclass
class _Instance:
    entity: Entity
    semaphore: asyncio.Semaphore
    pending: int = 0
    last_active: float = 0.0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    state: DurableState | None = None  # an entity declared with state=


class EntityRuntime:
    """Hosts the registered entity types on one runner (the default deliverer).

    Args:
        clock: time source.
        runner: this runner's address (handlers' context shows it).
        types: the entity types declared before start, by name (copied).
        grace: seconds stopping shards wait for running handlers.
        state: where entities declared with ``state=`` keep it (``None``: in
            memory only, each activation starts fresh).
        outbox: builds the clients of ``ctx.client(...)`` (``None``: refused).
        publisher: stages the events of ``ctx.publish(...)`` (``None``: refused).
    """

    def __init__(self, clock: Clock, runner: RunnerAddress | None, *,
                 types: Mapping[str, type[Entity]] | None = None, grace: float = 15.0,
                 state: StateStore | None = None, outbox: OutboxFactory | None = None,
                 publisher: EventStager | None = None) -> None:
        self._clock = clock
        self._runner = runner
        self._state = state
        self._outbox = outbox
        self._publisher = publisher
        self._codec = MsgpackCodec()
        self.types: dict[str, type[Entity]] = dict(types or {})
        self.instances: dict[EntityAddress, _Instance] = {}
        self._stopping: set[ShardId] = set()
        #: how long stopping shards wait for running handlers (shutdown grace)
        self.grace = grace

    def register(self, entity_type: type[Entity]) -> None:
        """Host ``entity_type`` here too (see :func:`add_entity_type`)."""
        add_entity_type(self.types, entity_type)

    def active_by_type(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(self.types, 0)
        for address in self.instances:
            counts[address.entity_type] = counts.get(address.entity_type, 0) + 1
        return counts

    # ---- delivery --------------------------------------------------------

    async def deliver(self, envelope: Envelope, unit: UnitOfWork | None = None) -> Reply:
        """Run the envelope's handler here; its failure is an error ``Reply``.

        ``unit`` (a persisted run's unit of work) receives what the handler
        stages: its durable state change, ``ctx.transaction`` writes, outbox
        messages. An unknown entity type or RPC raises ``unknown_entity_type`` /
        ``unknown_rpc`` for a volatile envelope; a persisted one is answered with
        that error as its reply, so it is stored and the message never read again
        (like a payload that cannot be decoded, or a stored state this code
        cannot read: ``state_version_unknown``).
        """
        message = envelope.message
        address = message.address
        entity_type = self.types.get(address.entity_type)
        spec = None if entity_type is None else entity_type.__covey_rpcs__.get(message.tag)
        if entity_type is None or spec is None:
            unknown = _unknown(address.entity_type, message.tag, known_type=entity_type is not None)
            if envelope.persisted:
                return Reply(message.id, error_payload(unknown), is_error=True)
            raise unknown
        if address.shard in self._stopping:
            raise EntityError(f"shard {address.shard} is stopping", reason=Reason.NOT_OWNER)
        try:
            argument = (
                self._codec.decode(message.payload, spec.request_type)
                if spec.takes_argument else None
            )
        except ClusterError as exc:
            return Reply(message.id, error_payload(exc), is_error=True)
        try:
            instance = await self._instance(entity_type, address)
        except StateUnreadable as exc:
            return _unreadable(envelope, exc)
        options = entity_type.__covey_options__
        if instance.pending >= options.mailbox_capacity:
            raise EntityError(f"mailbox of {address} is full ({options.mailbox_capacity})",
                              reason=Reason.MAILBOX_FULL, entity_type=address.entity_type)
        run = None if not envelope.persisted else HandlerRun(address, message.id, unit,
                                                             self._outbox, self._publisher)
        instance.pending += 1
        if instance.state is not None:
            return await self._run_with_state(instance, spec, envelope, argument, run)
        try:
            async with instance.semaphore:
                return await self._traced_run(instance, spec, envelope, argument, run)
        finally:
            instance.pending -= 1
            instance.last_active = self._clock.monotonic()

    async def _run_with_state(self, instance: _Instance, spec: RpcSpec, envelope: Envelope,
                              argument: Any, run: HandlerRun | None) -> Reply:
        """:meth:`_run` for an entity with durable state: its change is staged on the
        unit, and the instance stays held until the unit commits or is discarded."""
        state = instance.state
        assert state is not None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                instance.pending -= 1
                instance.last_active = self._clock.monotonic()
                instance.semaphore.release()

        held = False
        try:
            await instance.semaphore.acquire()
        except BaseException:
            instance.pending -= 1
            raise
        try:
            try:
                await state.refresh(instance.entity, self._state)
            except StateUnreadable as exc:
                return _unreadable(envelope, exc)
            try:
                reply = await self._traced_run(instance, spec, envelope, argument, run)
                if run is None or run.unit is None:
                    return state.read_only(instance.entity, reply.request_id) or reply
                reply, held = state.stage(instance.entity, run.unit, reply, release)
            except BaseException:
                state.restore(instance.entity)  # the run did not complete: it keeps nothing
                raise
            return reply
        finally:
            if not held:
                release()

    async def _traced_run(self, instance: _Instance, spec: RpcSpec, envelope: Envelope,
                          argument: Any, run: HandlerRun | None) -> Reply:
        """:meth:`_run` inside its ``process`` span: a child of the caller's span for a
        volatile call, a new trace linked to it for a persisted one (docs/tracing.md)."""
        message = envelope.message
        with consumer_span(
            f"process {message.address.entity_type}.{message.tag}", message.headers,
            link=envelope.persisted, kind="consumer" if envelope.persisted else "server",
            attributes=lambda: _process_attributes(message),
            details=lambda: self._process_details(message),
        ) as span:
            reply = await self._run(instance, spec, envelope, argument, run)
            if reply.is_error:
                span.fail("the handler failed")
            return reply

    def _process_details(self, message: Message) -> dict[str, str | None]:
        """What a ``process`` span adds with covey's detailed attributes on."""
        return {
            "covey.entity.id": message.address.entity_id,
            "covey.rpc": message.tag,
            "covey.shard": str(message.address.shard),
            "covey.runner": None if self._runner is None else str(self._runner),
        }

    async def _run(self, instance: _Instance, spec: RpcSpec, envelope: Envelope,
                   argument: Any, run: HandlerRun | None) -> Reply:
        message = envelope.message
        placement = ClusterPlacement(
            runner_id=None if self._runner is None else str(self._runner),
            shard_id=str(message.address.shard),
            entity=f"{message.address.entity_type}/{message.address.entity_id}",
        )
        # the handler task copies the context as it is created: set it first
        context = traced_context(RequestContext.from_headers(message.headers, placement))
        with use_context(context):
            # a volatile call made outside any persisted run (the usual case) sets nothing
            token = (CURRENT_RUN.set(run)
                     if run is not None or CURRENT_RUN.get() is not None else None)
            try:
                call = spec.fn(instance.entity, argument) if spec.takes_argument else spec.fn(
                    instance.entity
                )
                # Not fire-and-forget, and not in a TaskSet: the task belongs to its
                # instance (stop_shards / stop_all cancel and await it) and is awaited
                # right here; its exception is the caller's answer, not a crash of the
                # runner, and the hot path keeps one task per call.
                task = asyncio.ensure_future(call)
            finally:
                if token is not None:
                    CURRENT_RUN.reset(token)
        instance.tasks.add(task)
        kind = "persisted" if envelope.persisted else "volatile"
        entity_type = message.address.entity_type
        started = self._clock.monotonic()
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not being_cancelled():
                # the shard was taken away while the handler ran: not completed here
                raise EntityError(f"{message.address} stopped: its shard moved",
                                  reason=Reason.NOT_OWNER) from None
            task.cancel()
            raise
        except Exception as exc:  # a handler failure is the caller's, not ours
            if run is not None and isinstance(exc, StorageError) and exc.retryable:
                # the store failed under the handler (say its unit's transaction
                # could not open): no answer to keep; the message stays stored and
                # runs again, as after a crash
                log.info("handler %s.%s met a storage failure; it runs again: %r",
                         entity_type, spec.name, exc)
                raise
            if run is not None and run.unit is not None and run.unit.lost:
                # the driver's error of a statement on ctx.transaction whose
                # connection was lost: the store's failure too, not the handler's
                log.info("handler %s.%s lost its transaction; it runs again: %r",
                         entity_type, spec.name, exc)
                raise StorageError(f"the transaction of {message.address} was lost: {exc}",
                                   reason=Reason.STORAGE_UNAVAILABLE,
                                   error_type=type(exc).__name__) from exc
            log.info("handler %s.%s failed: %r", entity_type, spec.name, exc)
            metrics.MESSAGES_FAILED.labels(entity_type, kind).inc()
            return Reply(message.id, error_payload(exc), is_error=True)
        finally:
            instance.tasks.discard(task)
            metrics.HANDLER_SECONDS.labels(entity_type).observe(
                self._clock.monotonic() - started
            )
            metrics.MESSAGES_HANDLED.labels(entity_type, kind).inc()
        try:
            return Reply(message.id, self._codec.encode(result))
        except ClusterError as exc:
            return Reply(message.id, error_payload(exc), is_error=True)

    async def _instance(self, entity_type: type[Entity], address: EntityAddress) -> _Instance:
        instance = self.instances.get(address)
        if instance is not None:
            await instance.started.wait()
            if self.instances.get(address) is instance:
                return instance
            # its activation failed (or it was dropped meanwhile): activate it here
            return await self._instance(entity_type, address)
        entity = entity_type()
        entity.ctx = EntityContext(address, self._runner)
        options = entity_type.__covey_options__
        instance = _Instance(entity, asyncio.Semaphore(options.concurrency),
                             last_active=self._clock.monotonic())
        self.instances[address] = instance
        metrics.ENTITIES_ACTIVE.labels(address.entity_type).inc()
        try:
            model = entity_type.__covey_state__
            if model is not None:
                instance.state, entity.state = await DurableState.load(self._state, model,
                                                                       address)
            await entity.on_start()
        except BaseException:
            if self.instances.get(address) is instance:
                del self.instances[address]
                metrics.ENTITIES_ACTIVE.labels(address.entity_type).dec()
            raise
        finally:
            instance.started.set()
        return instance

    # ---- stopping --------------------------------------------------------

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop the instances of ``shards``; graceful waits for handlers, up to the grace."""
        self._stopping |= shards
        try:
            doomed = [(a, i) for a, i in self.instances.items() if a.shard in shards]
            await self._stop(doomed, graceful=graceful, grace=self.grace)
        finally:
            self._stopping -= shards


    async def stop_all(self, *, graceful: bool) -> None:
        await self._stop(list(self.instances.items()), graceful=graceful, grace=self.grace)

    async def _stop(
        self, doomed: list[tuple[EntityAddress, _Instance]], *, graceful: bool, grace: float
    ) -> None:
        tasks = {t for _, inst in doomed for t in inst.tasks}
        if tasks and graceful:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for address, instance in doomed:
            if self.instances.get(address) is instance:
                del self.instances[address]
                metrics.ENTITIES_ACTIVE.labels(address.entity_type).dec()
            with contextlib.suppress(Exception):
                await instance.entity.on_stop()

    async def reap(self) -> int:
        """Drop instances idle past their ``max_idle``; returns how many."""
        now = self._clock.monotonic()
        idle = [
            (address, instance) for address, instance in self.instances.items()
            if instance.pending == 0
            and not type(instance.entity).__covey_options__.keep_alive
            and now - instance.last_active >= type(instance.entity).__covey_options__.max_idle
        ]
        await self._stop(idle, graceful=False, grace=0)
        return len(idle)

    async def reaper_loop(self) -> None:
        while True:
            idle_times = [t.__covey_options__.max_idle for t in self.types.values()] or [60.0]
            await self._clock.sleep(min(max(min(idle_times) / 2, 1.0), 30.0))
            await self.reap()


def _process_attributes(message: Message) -> dict[str, str]:
    """The attributes of every ``process`` span (docs/tracing.md lists them)."""
    attributes = {
        "messaging.system": "covey",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": message.address.entity_type,
        "messaging.message.id": str(message.id),
    }
    # the request context's, when there is one (none: no attribute, no cost)
    if (tenant := message.headers.get(TENANT_HEADER)) is not None:
        attributes["covey.tenant"] = tenant
    if (request_id := message.headers.get(REQUEST_HEADER)) is not None:
        attributes["covey.request_id"] = request_id
    return attributes


def _unknown(entity_type: str, tag: str, *, known_type: bool) -> EntityError:
    if not known_type:
        return EntityError(f"unknown entity type {entity_type!r}",
                           reason=Reason.UNKNOWN_ENTITY_TYPE, entity_type=entity_type)
    return EntityError(f"{entity_type} has no rpc {tag!r}", reason=Reason.UNKNOWN_RPC,
                       entity_type=entity_type, rpc=tag)


def _unreadable(envelope: Envelope, unreadable: StateUnreadable) -> Reply:
    """The answer to a call of an entity whose stored state this code cannot read:
    a persisted one gets the error as its (stored) reply, a volatile one raises it."""
    if not envelope.persisted:
        raise unreadable.error from None
    return Reply(envelope.message.id, error_payload(unreadable.error), is_error=True)
