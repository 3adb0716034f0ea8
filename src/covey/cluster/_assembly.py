"""The one place a runner is assembled: its object graph, built in one order.

:meth:`Runner.start` builds, from what the application declared, everything a
cluster member runs on and starts it::

    storage ─ transport ─ Sharding ─ Messenger ─ Jobs, EventPublisher, Events
                                 └─ deliveries: EntityRuntime (default), JobRunner (covey.Job),
                                                EventRunner (covey.Event)
                                 └─ listeners:  Messenger, SingletonManager, CronManager

Every background task lives in one root :class:`~covey.core.TaskSet` owned by
the runner's supervisor; each component gets a named child of it. A task that
crashes cancels the runner's tasks (it stops serving, loudly) and is reported to
the :class:`~covey.cluster.Cluster` so ``serve()`` returns. :meth:`Runner.close`
takes it apart gracefully in the reverse order; :meth:`Runner.abort` drops it
at once, as if the process died.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from covey.cluster._declaring import Declarations
from covey.core import Clock, ClusterError, CoveyConfig, RunnerAddress, metrics
from covey.core.runtime import TaskSet, check_upcasters
from covey.entities.runtime import EntityRuntime, OutboxClients
from covey.events import Events
from covey.events.runtime import EVENTS_SINGLETON, EventFanout, EventPublisher, EventRunner
from covey.health import Health
from covey.health.runtime import HEALTH_LOOP, HealthParts
from covey.jobs import Jobs
from covey.jobs.runtime import (
    JOB_ENTITY,
    JOBS_METRICS,
    JobRunner,
    RunnerJobHost,
    sample_job_metrics,
)
from covey.realtime.runtime import (
    ITEMS_KIND,
    MAIL_KIND,
    POKE_KIND,
    USER_KIND,
    ConnectionReport,
    Presence,
    StreamHub,
    Streams,
    StreamTrimmer,
)
from covey.sharding import RunnerTransport
from covey.sharding.runtime import Body, DeliveryRegistry, Messenger, RetentionPurger, Sharding
from covey.singletons import SingletonContext
from covey.singletons.runtime import CronManager, CronSpec, SingletonManager, SingletonSpec
from covey.storage import EVENT_ENTITY_TYPE, Storage, WakeupSource
from covey.webhooks import Webhooks
from covey.webhooks.runtime import WEBHOOK_JOB, EndpointRegistry, WebhookSender
from covey.workflows import Workflows
from covey.workflows.runtime import WORKFLOW_ENTITY, WorkflowRunner

log = logging.getLogger("covey.cluster")


class Runner:
    """One started cluster member: every part of it, and its root task set.

    Args:
        config: the cluster's settings.
        storage: the store (started by :meth:`start`, closed by :meth:`close`).
        transport: the transport (started unless ``client_only``).
        clock: the time source of every part.
        client_only: route calls but host nothing.
        groups: the shard groups this runner serves.
        weight: this runner's share of shards.
        on_crash: told when a task of the runner crashed (after it was logged).
        health: the cluster's health checks, started with the runner's loops.
    """

    def __init__(self, config: CoveyConfig, storage: Storage, transport: RunnerTransport,
                 clock: Clock, *, client_only: bool, groups: tuple[str, ...], weight: int,
                 on_crash: Callable[[BaseException], None],
                 health: Health | None = None) -> None:
        self.config = config
        self.health = health
        self.storage = storage
        self.transport = transport
        self.clock = clock
        self.client_only = client_only
        self._groups = groups
        self._weight = weight
        self._on_crash = on_crash
        self.crashed: BaseException | None = None
        self.tasks = TaskSet("covey-runner", on_crash=self._crashed)
        self.deliveries = DeliveryRegistry()
        self._loops: list[TaskSet] = []  # closed after the components, before the transport
        self.sharding: Sharding | None = None
        self.messenger: Messenger | None = None
        self.jobs: Jobs | None = None
        self.entities: EntityRuntime | None = None
        self.job_runner: JobRunner | None = None
        self.publisher: EventPublisher | None = None
        self.events: Events | None = None
        self.event_runner: EventRunner | None = None
        self.fanout: EventFanout | None = None
        self.singletons: SingletonManager | None = None
        self.crons: CronManager | None = None
        self.workflows: Workflows | None = None
        self.workflow_runner: WorkflowRunner | None = None
        self.webhooks: Webhooks | None = None
        self.webhook_sender: WebhookSender | None = None
        self.streams: Streams | None = None
        self.presence: Presence | None = None
        self.connection_report: ConnectionReport | None = None

    # ---- building --------------------------------------------------------

    async def start(self, declared: Declarations) -> None:
        """Build the graph, join the cluster and start every loop.

        On failure the parts built so far stay set: :meth:`close` closes them.
        """
        config, storage, clock = self.config, self.storage, self.clock
        _check_state_versions(declared)
        await storage.start()
        self.transport.use_tasks(self._child("covey-transport"))
        address = None
        if not self.client_only:
            address = await self.transport.start(self._on_request, self._on_notify)
        # no await from here to the messenger: the transport's handlers find it set
        sharding = self.sharding = Sharding(config, storage, clock, address=address,
                                            groups=self._groups, weight=self._weight)
        messenger = self.messenger = Messenger(
            config, storage, self.transport, sharding, clock,
            deliveries=self.deliveries, tasks=self._child("covey-messenger"))
        registry = EndpointRegistry(storage.state, clock.monotonic)
        # every member may send webhooks; the ones that host shards make the attempts
        sender = self.webhook_sender = WebhookSender(registry, clock, config.webhooks)
        self.jobs = Jobs(storage, messenger, sharding.snowflake, clock, config.shards,
                         specs={**{spec.name: spec for spec in declared.jobs},
                                WEBHOOK_JOB: sender.spec()})
        self.webhooks = Webhooks(registry, self.jobs, storage, sharding.snowflake, clock,
                                 config.webhooks, types=declared.webhook_types)
        self._realtime(address)
        publisher = self.publisher = EventPublisher(storage, messenger, sharding.snowflake,
                                                    clock, config.shards)
        self.events = Events(storage, messenger, publisher, sharding.snowflake, clock)
        self.workflows = Workflows(storage, messenger, sharding.snowflake, clock, config.shards,
                                   declared.workflows)
        await self.workflows.prepare()
        singletons = list(declared.singletons)
        if address is not None:
            self._host(declared, address)
            # the webhooks' dead-letter gauge is sampled with the jobs'
            if (declared.jobs or declared.webhook_types or declared.forwards_events) and \
                    not any(s.name == JOBS_METRICS for s in singletons):
                singletons.append(SingletonSpec(JOBS_METRICS, self._sample_job_metrics,
                                                None, None))
            if declared.subscriptions:
                # the groups exist before this runner serves: a publisher reading them
                # from now on stores their deliveries itself
                for sub in declared.subscriptions:
                    await storage.events.register_group(sub.group, sub.topic, start=sub.start,
                                                        now=clock.now())
                self.fanout = EventFanout(storage, messenger, sharding.snowflake, clock,
                                          config.shards,
                                          retention=config.storage.event_retention,
                                          max_count=config.storage.event_max_count)
                if not any(s.name == EVENTS_SINGLETON for s in singletons):
                    singletons.append(SingletonSpec(EVENTS_SINGLETON, self._fan_out,
                                                    None, None))
        self.singletons = SingletonManager(sharding, storage, clock, config.shards,
                                           tasks=self._child("covey-singletons"))
        for spec in singletons:
            self.singletons.add(spec)
        if address is not None:
            sharding.listeners.append(self.singletons)
            if declared.crons:
                self._schedule(declared.crons)
        self.transport.on_peer_lost(lambda peer: sharding.wake())
        if address is not None and isinstance(storage, WakeupSource):
            # None: the listener reconnected and wake-ups may have been missed
            await storage.listen(
                lambda shard: messenger.poke() if shard is not None else messenger.resync())
        await sharding.join()
        sharding.start_loops(self._loop("covey-sharding"))
        messenger.start()
        if self.entities is not None:
            self._loop("covey-entities").spawn(self.entities.reaper_loop(), name="covey-reaper")
            purger = RetentionPurger(storage, sharding, clock, config.storage, config.shards,
                                     keep_errors_of=(JOB_ENTITY, EVENT_ENTITY_TYPE))
            # not a singleton: it would show in every application's singleton listing
            self._loop("covey-retention").spawn(purger.run(), name="covey-retention")
        if self.health is not None:
            self._watch(self.health, address)
        if self.streams is not None:
            loops = self._loop("covey-realtime")
            hub = self.streams.hub
            loops.spawn(hub.poll_loop(), name="covey-stream-poll")
            if address is not None:
                loops.spawn(hub.route_loop(), name="covey-realtime-routes")
                trimmer = StreamTrimmer(storage.streams, clock, config.realtime)
                loops.spawn(trimmer.run(), name="covey-stream-retention")
                assert self.presence is not None
                presence = self.presence
                self.connection_report = ConnectionReport(
                    storage.state, clock, str(address), lambda: presence.connections,
                    lambda: len(hub.streams_served))
                loops.spawn(self.connection_report.run(), name="covey-realtime-report")

    def _realtime(self, address: RunnerAddress | None) -> None:
        """Streams and presence (every member may publish and send to users; a
        runner also receives the pushes for the subscribers it holds)."""
        assert self.messenger is not None and self.sharding is not None
        store, options = self.storage.streams, self.config.realtime
        runner = None if address is None else str(address)
        spawn = self._child("covey-realtime-pushes")
        hub = StreamHub(store, self.clock, options, runner=runner)
        self.streams = Streams(store, hub, self.transport, self.sharding.snowflake, self.clock,
                               options, lambda coro: spawn.spawn(coro, name="covey-stream-push"))
        self.presence = Presence(store, self.transport, self.sharding.snowflake, self.clock,
                                 options, runner=runner)
        self.messenger.add_handler(ITEMS_KIND, self.streams.handle)
        self.messenger.add_handler(POKE_KIND, self.streams.handle)
        self.messenger.add_handler(USER_KIND, self.presence.handle)
        self.messenger.add_handler(MAIL_KIND, self.presence.handle)

    def _watch(self, health: Health, address: RunnerAddress | None) -> None:
        """Start the health checks: a client-only member has the storage check only."""
        sharding = self.sharding
        assert sharding is not None
        hosting = address is not None
        wakeups = self.storage if hosting and isinstance(self.storage, WakeupSource) else None
        health.start(self._loop(HEALTH_LOOP), HealthParts(
            self.storage, service=str(address or sharding.registration),
            sharding=sharding if hosting else None,
            singletons=self.singletons if hosting else None,
            loops=self.tasks if hosting else None, wakeups=wakeups,
            crashed=lambda: self.crashed))

    def _host(self, declared: Declarations, address: RunnerAddress) -> None:
        """What a runner that serves shards hosts: entities (the default
        deliverer) and the job runner (the deliverer of ``covey.Job``)."""
        assert self.messenger is not None and self.jobs is not None
        assert self.sharding is not None
        grace = self.config.sharding.shutdown_grace
        self.entities = EntityRuntime(
            self.clock, address, types=declared.entity_types, grace=grace,
            state=self.storage.state,
            outbox=OutboxClients(self.messenger, self.sharding.snowflake, self.config.shards),
            publisher=None if self.publisher is None else self.publisher.stage)
        self.deliveries.set_default(self.entities)
        assert self.publisher is not None
        self.event_runner = EventRunner(self.clock, str(address), self.storage.messages,
                                        self.sharding, self.publisher.stage,
                                        tasks=self._child("covey-events"),
                                        rerun=self.messenger.rerun,
                                        wake=self.messenger.wake_sent, grace=grace)
        for sub in declared.subscriptions:
            self.event_runner.add(sub)
        self.deliveries.register(EVENT_ENTITY_TYPE, self.event_runner)
        host = RunnerJobHost(self.messenger, self.storage, self.jobs)
        self.job_runner = JobRunner(self.clock, str(address), host,
                                    tasks=self._child("covey-jobs"), grace=grace)
        assert self.webhook_sender is not None
        for spec in [*declared.jobs, self.webhook_sender.spec()]:
            self.job_runner.add(spec)
        self.deliveries.register(JOB_ENTITY, self.job_runner)
        assert self.workflows is not None
        sharding = self.sharding
        self.workflow_runner = WorkflowRunner(
            self.clock, self.storage, epoch_of=sharding.epoch_of, fenced=sharding.fenced,
            wake_sent=self.messenger.wake_sent, rerun=self.messenger.rerun,
            next_id=sharding.snowflake.next_id, client=self.workflows,
            tasks=self._child("covey-workflows"))
        for workflow in declared.workflows.values():
            self.workflow_runner.add(workflow)
        self.deliveries.register(WORKFLOW_ENTITY, self.workflow_runner)

    def _schedule(self, specs: Sequence[CronSpec]) -> None:
        """Cron: its ticks are messages to an entity type of the entity runtime."""
        assert self.sharding is not None and self.messenger is not None
        assert self.entities is not None
        self.crons = CronManager(self.messenger, self.sharding.snowflake, self.clock,
                                 self.config.shards, messages=self.storage.messages,
                                 tasks=self._child("covey-cron"))
        for spec in specs:
            self.crons.add(spec)
        self.entities.register(self.crons.entity_type)
        self.sharding.listeners.append(self.crons)

    def _child(self, name: str) -> TaskSet:
        return self.tasks.child(name)

    def _loop(self, name: str) -> TaskSet:
        """A component's set of background loops (stopped just before the transport)."""
        loops = self.tasks.child(name)
        self._loops.append(loops)
        return loops

    async def _on_request(self, peer: RunnerAddress | None, body: Body) -> Body:
        assert self.messenger is not None
        return await self.messenger.handle_request(peer, body)

    async def _on_notify(self, peer: RunnerAddress | None, body: Body) -> None:
        assert self.messenger is not None
        await self.messenger.handle_notify(peer, body)

    async def _sample_job_metrics(self, ctx: SingletonContext[None]) -> None:
        """The job gauges, exported by one runner (a singleton) for the cluster."""
        await sample_job_metrics(self.storage.messages, self.clock,
                                 on_dead=self._sample_webhook_metrics)

    async def _sample_webhook_metrics(self, dead: dict[str, int]) -> None:
        """The webhooks' cluster-wide gauges, sampled with the jobs' ones."""
        metrics.WEBHOOK_DEAD_LETTER.set(dead.get(WEBHOOK_JOB, 0))
        if self.webhooks is not None:
            endpoints = await self.webhooks.endpoints()
            metrics.WEBHOOK_ENDPOINTS_DISABLED.set(sum(not e.enabled for e in endpoints))

    async def _fan_out(self, ctx: SingletonContext[None]) -> None:
        """The events singleton: sequencing, the deliveries publishers could not
        make, retention and the group lag gauges (one runner of the cluster)."""
        assert self.fanout is not None
        await self.fanout.run()

    def _crashed(self, error: BaseException) -> None:
        """A task of the runner died of ``error``: stop serving, as a TaskGroup would."""
        if self.crashed is None:
            log.critical("a covey background task crashed; the runner stops serving "
                         "(%s: %s)", type(error).__name__, error)
            self.crashed = error
        for task in self.tasks.tasks:
            task.cancel()
        self._on_crash(error)

    # ---- taking apart ----------------------------------------------------

    async def close(self) -> None:
        """Leave gracefully and close what :meth:`start` opened, in reverse order.

        Every step runs even when one fails (the storage is closed whatever
        happened before); the first failure is raised at the end.
        """
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self.streams is not None:
            steps.append(("real-time routes", self.streams.hub.leave))
        if self.connection_report is not None:
            steps.append(("real-time report", self.connection_report.forget))
        if self.sharding is not None:
            steps.append(("membership", self._leave))
        if self.entities is not None:
            steps.append(("entities", lambda: self._stop_entities(graceful=True)))
        for part, component in (("singletons", self.singletons), ("crons", self.crons)):
            if component is not None:
                steps.append((part, component.stop))
        if self.job_runner is not None:
            steps.append(("job runner", self.job_runner.close))
        if self.webhook_sender is not None:
            steps.append(("webhook sender", self.webhook_sender.close))
        if self.event_runner is not None:
            steps.append(("event runner", self.event_runner.close))
        if self.workflow_runner is not None:
            steps.append(("workflow runner", self.workflow_runner.close))
        if self.messenger is not None:
            steps.append(("messenger", self.messenger.close))
        steps += [("background loops", self._close_loops),
                  ("transport", self.transport.close), ("storage", self.storage.close),
                  ("tasks", self.tasks.close)]
        failure: Exception | None = None
        for part, step in steps:
            try:
                await step()
            except Exception as exc:
                log.warning("closing the %s failed", part, exc_info=True)
                failure = failure or exc
        if failure is not None:
            raise failure

    async def abort(self) -> None:
        """Stop at once: cancel every task, close transport and storage.

        Nothing is handed over: the runner stays registered and keeps its shard
        locks until they expire, as if its process had died.
        """
        await self.tasks.close()
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("transport", self.transport.close), ("storage", self.storage.close)]
        if self.entities is not None:  # their handlers are tasks of the deliveries
            steps.insert(0, ("entities", lambda: self._stop_entities(graceful=False)))
        for part, step in steps:
            try:
                await step()
            except Exception:
                log.warning("closing the %s of an aborted runner failed", part, exc_info=True)

    async def drain(self) -> None:
        """Hand the shards over now, staying registered until :meth:`close`
        (:meth:`~covey.sharding.Sharding.drain`); tell the peers so."""
        if self.streams is not None:
            self.streams.hub.stop_all()  # SSE clients get retry: and reconnect elsewhere
        if self.sharding is not None:
            await self._telling_peers(self.sharding.drain)

    async def _leave(self) -> None:
        """Deregister first, so peers rebalance at once; tell them so."""
        assert self.sharding is not None
        await self._telling_peers(self.sharding.leave)

    async def _telling_peers(self, step: Callable[[], Awaitable[None]]) -> None:
        assert self.sharding is not None
        sharding = self.sharding
        peers = [r.address for r in sharding.live if r.address != sharding.address]
        await step()
        for peer in peers:  # let them rebalance now instead of at their next membership read
            with contextlib.suppress(ClusterError, OSError):
                await self.transport.notify(peer, {"k": "leaving"})

    async def _stop_entities(self, *, graceful: bool) -> None:
        assert self.entities is not None
        await self.entities.stop_all(graceful=graceful)

    async def _close_loops(self) -> None:
        for loops in self._loops:
            await loops.close()


def _check_state_versions(declared: Declarations) -> None:
    """Refuse to start with a gap in an entity state's upcaster chain: an old
    snapshot would otherwise fail on its first read, long after the deploy."""
    for entity_type in declared.entity_types.values():
        state = getattr(entity_type, "__covey_state__", None)
        if state is not None:
            check_upcasters(state)
