"""The Cluster facade: what an application holds.

``async with cluster:`` joins the cluster (storage, transport, membership, shard
ownership, delivery, reaper) and leaves it gracefully on exit: deregister first,
refuse new work with a retryable "not here", let in-flight handlers finish within
the grace period, release the shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import inspect
import logging
import signal
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Self, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from covey.core import (
    Clock,
    ClusterError,
    CoveyConfig,
    EntityAddress,
    MsgpackCodec,
    Reason,
    RunnerAddress,
    ShardId,
    SystemClock,
    check_seconds,
    shard_for,
)
from covey.entities import Entity, EntityClient, EntityRuntime
from covey.jobs import JobDefinition, JobRunner, Jobs, JobSpec, Retry, priority_value
from covey.jobs._definition import (
    JOB_ENTITY,
    PriorityName,
    check_job_name,
    invalid,
)
from covey.jobs._jobs import progress_key
from covey.jobs._metrics import JOBS_METRICS, sample_job_metrics
from covey.sharding import (
    Envelope,
    Messenger,
    Reschedule,
    RunnerTransport,
    Sharding,
    TcpTransport,
    raise_error_reply,
)
from covey.sharding._retention import RetentionPurger
from covey.singletons import (
    CronManager,
    CronSpec,
    SingletonContext,
    SingletonHealth,
    SingletonManager,
    SingletonSpec,
)
from covey.singletons._cron import CronFn, cron_spec
from covey.singletons._singleton import SingletonFn
from covey.storage import Message, Reply, Storage, WakeupSource, open_storage

log = logging.getLogger("covey.cluster")


E = TypeVar("E", bound=Entity)


class Cluster:
    """One process's membership in a covey cluster.

    Args:
        config: settings; ``CoveyConfig.from_env()`` when omitted.
        client_only: route calls but host nothing (no shards, no listening port).
        groups: the shard groups this runner serves.
        weight: this runner's share of shards relative to the others.
        storage: a storage to use instead of the one ``config`` names (tests).
        transport: a transport to use instead of TCP (tests).
        clock: a clock to use instead of the system clock (tests).
    """

    def __init__(
        self,
        config: CoveyConfig | None = None,
        *,
        client_only: bool = False,
        groups: tuple[str, ...] = ("default",),
        weight: int = 1,
        storage: Storage | None = None,
        transport: RunnerTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config or CoveyConfig.from_env()
        self.client_only = client_only
        self._groups = groups
        self._weight = weight
        self._clock = clock or SystemClock()
        self.storage = storage or open_storage(self.config, clock=self._clock)
        self.transport: RunnerTransport = transport or TcpTransport(
            self.config.runner_host, self.config.runner_port,
            secret=self.config.cluster_secret, options=self.config.transport,
        )
        self.runtime = EntityRuntime(self._clock, None)
        self.runtime.grace = self.config.sharding.shutdown_grace
        self._sharding: Sharding | None = None
        self._messenger: Messenger | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._singleton_specs: list[SingletonSpec] = []
        self._singletons: SingletonManager | None = None
        self._cron_specs: list[CronSpec] = []
        self._job_specs: list[JobSpec] = []
        self._jobs: Jobs | None = None
        self.job_runner: JobRunner | None = None
        self.crons: CronManager | None = None
        self._stop = asyncio.Event()
        self._started = False

    @classmethod
    def from_env(cls, **kwargs: Any) -> Cluster:
        """A cluster configured from ``COVEY_*`` variables."""
        return cls(CoveyConfig.from_env(), **kwargs)

    # ---- declaring -------------------------------------------------------

    def register(self, *entity_types: type[Entity]) -> None:
        """Host these entity types on this runner (every runner registers the same)."""
        for entity_type in entity_types:
            self.runtime.register(entity_type)

    def singleton(
        self, name: str, *, state: type[Any] | None = None,
        expected_interval: float | None = None, shard_group: str = "default",
    ) -> Callable[[SingletonFn], SingletonFn]:
        """Declare a singleton: ``async def fn(ctx: covey.SingletonContext) -> None``.

        Args:
            name: unique in the cluster; decides which shard (and so runner) hosts it.
            state: a type (e.g. a pydantic model) for ``ctx.state``; saved with
                ``await ctx.save_state()`` and handed to the next owner.
            expected_interval: seconds between ``ctx.beat()`` calls; a singleton
                silent for twice this long is reported unhealthy.

        Raises:
            ClusterError: ``invalid_argument`` naming the option
                (``details["field"]``) for a name that is empty, not a ``str``,
                longer than 255 UTF-8 bytes, holds NUL or a lone surrogate, or is
                declared twice; an ``expected_interval`` that is not a finite
                number of seconds > 0; a bad shard group or state type.
        """
        # checked now, not at start: a bad spec there would stop the whole cluster
        probe = SingletonSpec(name, _no_fn, state, expected_interval, shard_group)

        def declare(fn: SingletonFn) -> SingletonFn:
            spec = dataclasses.replace(probe, fn=fn)  # checked again
            if any(s.name == name for s in self._singleton_specs):
                raise invalid("name", f"singleton {name!r} is declared twice")
            self._singleton_specs.append(spec)
            return fn

        return declare

    def cron(
        self, expression: str, *, name: str | None = None, tz: str = "UTC",
        skip_if_older_than: dt.timedelta | float = dt.timedelta(days=1),
        from_previous: bool = False,
    ) -> Callable[[CronFn], CronFn]:
        """Declare a cron: ``async def fn(tick: covey.CronTick) -> None``, once per tick.

        Args:
            expression: 5 fields (minute resolution) or 6 with seconds first
                (``"*/5 * * * * *"``: every 5 seconds).
            name: unique in the cluster (default: the function's name).
            tz: IANA time zone the expression is read in.
            skip_if_older_than: a tick that comes due later than this (all runners
                were down) is skipped and counted, never run in a burst; seconds
                > 0 or a ``timedelta``, ``math.inf`` to never skip.
            from_previous: after downtime, continue from the last scheduled tick
                (catching up on ticks younger than ``skip_if_older_than``) instead of
                from now.

        Raises:
            ClusterError: ``invalid_argument`` naming the option
                (``details["field"]``) for an expression croniter refuses or that
                never fires, an unknown time zone, a ``skip_if_older_than`` that is
                not seconds > 0, and a name that is empty, not a ``str``, longer
                than 255 UTF-8 bytes, holds NUL or a lone surrogate, or is
                declared twice.
        """
        # checked now, not at start: a bad spec there would stop the whole cluster
        probe = cron_spec("_" if name is None else name, expression, _no_fn, tz=tz,
                          skip_if_older_than=skip_if_older_than, from_previous=from_previous)

        def declare(fn: CronFn) -> CronFn:
            cron_name = getattr(fn, "__name__", "") if name is None else name
            spec = dataclasses.replace(probe, name=cron_name, fn=fn)  # checked again
            if any(s.name == cron_name for s in self._cron_specs):
                raise invalid("name", f"cron {cron_name!r} is declared twice")
            self._cron_specs.append(spec)
            return fn

        return declare

    def job(
        self, name: str, *, retry: Retry | None = None, timeout: float | None = None,
        priority: PriorityName | int = "normal", concurrency: int = 100,
    ) -> Callable[[Callable[..., Awaitable[Any]]], JobDefinition[Any]]:
        """Declare a job: ``async def handler(job: covey.JobContext, payload: Model)``.

        Args:
            retry: the retry policy (default ``Retry()``: 3 attempts, exponential
                backoff from 1 s with jitter).
            timeout: seconds a run may take; a run that takes longer is cancelled
                and counts as a failed attempt.
            priority: default priority of its jobs (``high``/``normal``/``low``/int).
            concurrency: runs of this job at once on one runner.

        Raises:
            ClusterError: ``invalid_argument`` naming the option (``details["field"]``)
                for an empty or repeated name, a timeout that is not a finite
                number of seconds > 0, a concurrency that is not an int >= 1, or a
                bad priority.
        """
        check_job_name(name)
        seconds = None if timeout is None else check_seconds("timeout", timeout)
        if seconds == 0:
            raise invalid("timeout", "0 would time out every run (None: no timeout)")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise invalid("concurrency", f"{concurrency!r} is not an int >= 1")
        if retry is not None and not isinstance(retry, Retry):
            raise invalid("retry", f"{retry!r} is not a covey.Retry")
        default_priority = priority_value(priority)

        def declare(fn: Callable[..., Awaitable[Any]]) -> JobDefinition[Any]:
            hints = typing.get_type_hints(fn)
            params = list(inspect.signature(fn).parameters)
            if len(params) != 2:
                raise ClusterError(f"job {name!r}: the handler takes (job, payload)",
                                   reason=Reason.INVALID_ARGUMENT)
            if any(s.name == name for s in self._job_specs):
                raise invalid("name", f"job {name!r} is declared twice")
            spec = JobSpec(name, fn, hints.get(params[1], Any), retry or Retry(), seconds,
                           default_priority, concurrency)
            self._job_specs.append(spec)
            return JobDefinition(spec, lambda: self.jobs)

        return declare

    async def _sample_job_metrics(self, ctx: SingletonContext[None]) -> None:
        """The job gauges, exported by one runner (a singleton) for the cluster."""
        await sample_job_metrics(self.storage.messages, self._clock)

    async def _purge_loop(self) -> None:
        """Retention: the owner of one shard purges old processed messages for all.

        Not a singleton: it would show in every application's singleton listing
        and health. Dead-lettered jobs are kept for an operator.
        """
        assert self._sharding is not None
        await RetentionPurger(self.storage, self._sharding, self._clock, self.config.storage,
                              self.config.shards, keep_errors_of=(JOB_ENTITY,)).run()

    @property
    def jobs(self) -> Jobs:
        """Status, results, cancel and the dead-letter of jobs."""
        if self._jobs is None:
            raise self._not_started()
        return self._jobs

    async def singleton_health(self) -> dict[str, SingletonHealth]:
        """Per singleton: healthy (beating within twice its expected interval)?"""
        return await self.singletons.health()

    @property
    def singletons(self) -> SingletonManager:
        if self._singletons is None:
            raise self._not_started()
        return self._singletons

    # ---- calling ---------------------------------------------------------

    def client(
        self, entity_type: type[E], entity_id: str, *,
        timeout: float | None = None, discard: bool = False, transaction: Any = None,
    ) -> E:
        """A typed proxy to one entity; its methods are the entity's RPCs.

        Args:
            timeout: the deadline of each call (default ``COVEY_SHARDING_CALL_TIMEOUT``).
            discard: fire-and-forget: calls return ``None`` once the message is
                sent (stored, for persisted RPCs).
            transaction: an asyncpg connection inside the application's own
                transaction (PostgreSQL): persisted calls are stored through it,
                exist only if it commits, wake the owner at commit, and return
                ``None``.
        """
        client = EntityClient(
            self.messenger, self.sharding.snowflake, entity_type, entity_id,
            shards=self.config.shards,
            timeout=timeout if timeout is not None else self.config.sharding.call_timeout,
            discard=discard or transaction is not None, transaction=transaction,
        )
        return cast(E, client)

    async def send_raw(
        self, entity_type: str, entity_id: str, tag: str, payload: bytes, *,
        persisted: bool = False, group: str = "default", timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send a pre-encoded request to any entity type (tools, tests, bridges).

        Returns the decoded reply as plain data; errors raise like typed calls.
        """
        message = Message(
            id=self.sharding.snowflake.next_id(),
            address=EntityAddress(entity_type, entity_id, shard_for(entity_id,
                                                                    self.config.shards, group)),
            tag=tag, payload=payload, headers=dict(headers or {}),
        )
        reply = await self.messenger.call(
            Envelope(message, persisted),
            timeout=timeout if timeout is not None else self.config.sharding.call_timeout,
            discard=False,
        )
        assert reply is not None
        if reply.is_error:
            raise_error_reply(reply, f"{entity_type}.{tag}")
        return MsgpackCodec().decode(reply.payload, Any)

    def snowflake(self) -> int:
        """A cluster-wide unique, time-ordered 64-bit id."""
        return self.sharding.snowflake.next_id()

    # ---- state -----------------------------------------------------------

    @property
    def sharding(self) -> Sharding:
        if self._sharding is None:
            raise self._not_started()
        return self._sharding

    @property
    def messenger(self) -> Messenger:
        if self._messenger is None:
            raise self._not_started()
        return self._messenger

    @property
    def address(self) -> RunnerAddress | None:
        return None if self._sharding is None else self._sharding.address

    def _not_started(self) -> ClusterError:
        """Which cluster is not started, and how to start it (no credentials shown)."""
        where = _without_credentials(self.config.database_url)
        kind = "client-only cluster" if self.client_only else "cluster"
        return ClusterError(
            f"the {kind} on {where} is not started: use 'async with cluster:' or "
            "'await cluster.start()' first (and 'await cluster.stop()' when done)",
            reason=Reason.INVALID_ARGUMENT, database=where, client_only=self.client_only)

    # ---- lifecycle -------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Join: connect storage, listen, register, take shards, start delivering.

        A start that fails closes what it opened (background tasks, the
        runner's registration, the transport, the storage) and re-raises its
        error. A cluster starts once: after :meth:`stop` or a failed start,
        make a new one.
        """
        if self._started:
            raise ClusterError("cluster already started (a Cluster starts once: after stop() "
                               "or a failed start, make a new one)",
                               reason=Reason.INVALID_ARGUMENT)
        self._started = True
        try:
            await self._join()
        except BaseException:
            log.warning("runner start failed; closing what it opened")
            with contextlib.suppress(Exception):  # logged there; the start's error matters
                await self._close()
            raise

    async def _join(self) -> None:
        """What :meth:`start` does; :meth:`start` undoes it if it raises."""
        await self.storage.start()
        address: RunnerAddress | None = None
        messenger_ref: list[Messenger] = []

        async def on_request(peer: RunnerAddress | None, body: dict[str, Any]) -> dict[str, Any]:
            return await messenger_ref[0].handle_request(peer, body)

        async def on_notify(peer: RunnerAddress | None, body: dict[str, Any]) -> None:
            await messenger_ref[0].handle_notify(peer, body)

        if not self.client_only:
            address = await self.transport.start(on_request, on_notify)
        self.runtime = _rebind(self.runtime, self._clock, address)
        self._sharding = Sharding(self.config, self.storage, self._clock, address=address,
                                  groups=self._groups, weight=self._weight)
        self._messenger = Messenger(self.config, self.storage, self.transport,
                                    self._sharding, self._clock)
        messenger_ref.append(self._messenger)
        self._jobs = Jobs(self.storage, self._messenger, self._sharding.snowflake,
                          self._clock, self.config.shards,
                          specs={spec.name: spec for spec in self._job_specs})
        if not self.client_only:
            self.job_runner = JobRunner(self._clock, None if address is None else str(address))
            self.job_runner.grace = self.config.sharding.shutdown_grace
            for job_spec in self._job_specs:
                self.job_runner.add(job_spec)
            self.job_runner.complete = self._messenger.complete
            self.job_runner.rerun = self._messenger.rerun
            self.job_runner.mark_started = self.storage.messages.mark_started
            self.job_runner.report = self._jobs.report
            storage = self.storage
            self.job_runner.forget = lambda job_id: storage.state.delete(progress_key(job_id))
            self._messenger.deliverer = _Router(self.runtime, self.job_runner)
        if self._job_specs and not self.client_only and not any(
                s.name == JOBS_METRICS for s in self._singleton_specs):
            self._singleton_specs.append(
                SingletonSpec(JOBS_METRICS, self._sample_job_metrics, None, None))
        self._singletons = SingletonManager(self._sharding, self.storage, self._clock,
                                            self.config.shards)
        for spec in self._singleton_specs:
            self._singletons.add(spec)
        if not self.client_only:
            self._sharding.listeners.append(self._singletons)
        if self._cron_specs and not self.client_only:
            self.crons = CronManager(self._messenger, self._sharding.snowflake, self._clock,
                                     self.config.shards, messages=self.storage.messages)
            for cron_spec in self._cron_specs:
                self.crons.add(cron_spec)
            self.runtime.register(self.crons.entity_type)
            self._sharding.listeners.append(self.crons)
        self.transport.on_peer_lost(lambda peer: self.sharding.wake())
        if not self.client_only and isinstance(self.storage, WakeupSource):
            messenger = self._messenger
            # None: the listener reconnected and wake-ups may have been missed
            await self.storage.listen(
                lambda shard: messenger.poke() if shard is not None else messenger.resync())
        await self._sharding.join()
        ready = asyncio.Event()
        self._supervisor = asyncio.create_task(self._supervise(ready), name="covey-runner")
        await ready.wait()
        log.info("runner %s joined (machine id %d, %d shards owned)",
                 address or "client-only", self._sharding.machine_id, len(self._sharding.owned))

    async def _supervise(self, ready: asyncio.Event) -> None:
        """Own every background loop: they live and die with this task."""
        assert self._sharding is not None and self._messenger is not None
        try:
            async with asyncio.TaskGroup() as tasks:
                self._sharding.start_loops(tasks)
                self._messenger.start(tasks)
                if not self.client_only:
                    tasks.create_task(self.runtime.reaper_loop(), name="covey-reaper")
                    tasks.create_task(self._purge_loop(), name="covey-retention")
                ready.set()
                await asyncio.Event().wait()  # until cancelled by stop()
        except Exception:
            log.critical("a covey background loop crashed; the runner stops serving",
                         exc_info=True)
            ready.set()
            self._stop.set()
            raise

    async def stop(self) -> None:
        """Leave gracefully (see the module docstring)."""
        if self._sharding is None or self._supervisor is None:
            return  # not started, stopped, or a failed start closed itself
        address = self._sharding.address
        await self._close()
        log.info("runner %s left", address or "client-only")

    async def _close(self) -> None:
        """Close what start opened, in reverse order. Every step runs even when
        one fails (the storage is closed whatever happened before); the first
        failure is raised at the end."""
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self._sharding is not None:
            steps.append(("membership", self._leave))
        steps.append(("entities", lambda: self.runtime.stop_all(graceful=True)))
        if self._singletons is not None:
            steps.append(("singletons", self._singletons.stop))
        if self.crons is not None:
            steps.append(("crons", self.crons.stop))
        if self.job_runner is not None:
            steps.append(("job runner", self.job_runner.close))
        if self._messenger is not None:
            steps.append(("messenger", self._messenger.close))
        steps += [("background loops", self._stop_supervisor),
                  ("transport", self.transport.close), ("storage", self.storage.close)]
        failure: Exception | None = None
        for part, step in steps:
            try:
                await step()
            except Exception as exc:
                log.warning("closing the %s failed", part, exc_info=True)
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _leave(self) -> None:
        """Deregister first, so peers rebalance at once; tell them so."""
        sharding = self.sharding
        peers = [r.address for r in sharding.live if r.address != sharding.address]
        await sharding.leave()
        for peer in peers:  # let them rebalance now instead of at their next membership read
            with contextlib.suppress(ClusterError, OSError):
                await self.transport.notify(peer, {"k": "leaving"})

    async def _stop_supervisor(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor

    async def serve(self, on_ready: Callable[[Cluster], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`), then leave gracefully.

        ``on_ready`` is called once the runner has joined and serves.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        async with self:
            if on_ready is not None:
                on_ready(self)
            await self._stop.wait()

    def request_stop(self) -> None:
        """Make :meth:`serve` return (gracefully)."""
        self._stop.set()


async def _no_fn(_: Any) -> None:
    """Stands in for the function while a declaration's options are checked."""


def _without_credentials(url: str) -> str:
    """``url`` without its password and query (which may hold one)."""
    parts = urlsplit(url)
    if parts.password is None and not parts.query:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, "", ""))


def _rebind(runtime: EntityRuntime, clock: Clock, address: RunnerAddress | None) -> EntityRuntime:
    fresh = EntityRuntime(clock, address)
    fresh.types = runtime.types
    fresh.grace = runtime.grace
    return fresh


class _Router:
    """The Messenger's deliverer: jobs to the JobRunner, the rest to the entities."""

    def __init__(self, entities: EntityRuntime, jobs: JobRunner) -> None:
        self._entities = entities
        self._jobs = jobs

    async def deliver(self, envelope: Envelope) -> Reply | Reschedule:
        if envelope.message.address.entity_type == JOB_ENTITY:
            return await self._jobs.deliver(envelope)
        return await self._entities.deliver(envelope)

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        await self._jobs.stop_shards(shards, graceful=graceful)
        await self._entities.stop_shards(shards, graceful=graceful)
