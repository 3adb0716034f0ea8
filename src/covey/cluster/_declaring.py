"""Declaring: what an application says every runner runs, before it starts.

Entity types, singletons, crons, jobs and event subscriptions are declared on the
:class:`~covey.cluster.Cluster` (this is its declaring half) and checked when
they are declared — a bad declaration accepted here would only fail at start,
and stop the whole cluster. :meth:`Declaring.declarations` is what the assembly
builds a runner from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from covey.core.runtime import invalid_argument
from covey.entities import Entity
from covey.entities.runtime import add_entity_type
from covey.events import Event
from covey.events.runtime import RetryPolicy, Subscription, subscriptions
from covey.jobs import JobDefinition, Jobs, PriorityName, Retry
from covey.jobs.runtime import JobSpec, job_spec
from covey.singletons.runtime import CronFn, CronSpec, SingletonFn, SingletonSpec, cron_spec
from covey.webhooks import Webhooks
from covey.webhooks.runtime import check_type
from covey.workflows import Workflow
from covey.workflows.runtime import workflow_spec


@dataclass(frozen=True)
class Declarations:
    """What an application declared on a cluster, as the assembly reads it."""

    entity_types: Mapping[str, type[Entity]]
    singletons: Sequence[SingletonSpec]
    crons: Sequence[CronSpec]
    jobs: Sequence[JobSpec]
    subscriptions: Sequence[Subscription] = ()
    workflows: Mapping[str, Workflow] = dataclasses.field(default_factory=dict)
    webhook_types: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    forwards_events: bool = False


class Declaring:
    """The declaring half of :class:`~covey.cluster.Cluster`."""

    def __init__(self) -> None:
        self._entity_types: dict[str, type[Entity]] = {}
        self._singleton_specs: list[SingletonSpec] = []
        self._cron_specs: list[CronSpec] = []
        self._job_specs: list[JobSpec] = []
        self._subscriptions: list[Subscription] = []
        self._workflows: dict[str, Workflow] = {}
        self._webhook_types: dict[str, Any] = {}
        self._forwards_events = False

    def declarations(self) -> Declarations:
        """What is declared now (copies: a runner is built from a snapshot)."""
        return Declarations(dict(self._entity_types), list(self._singleton_specs),
                            list(self._cron_specs), list(self._job_specs),
                            list(self._subscriptions), dict(self._workflows),
                            dict(self._webhook_types), self._forwards_events)

    @property
    def webhooks(self) -> Webhooks:
        """The started cluster's webhooks (the cluster overrides it)."""
        raise NotImplementedError

    @property
    def jobs(self) -> Jobs:
        """The started cluster's jobs (the cluster overrides it)."""
        raise NotImplementedError

    def _also_host(self, entity_type: type[Entity]) -> None:
        """An entity type registered after start: the cluster hosts it at once."""

    def register(self, *entity_types: type[Entity]) -> None:
        """Host these entity types on this runner (every runner registers the same)."""
        for entity_type in entity_types:
            add_entity_type(self._entity_types, entity_type)
            self._also_host(entity_type)

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
                raise invalid_argument("name", f"singleton {name!r} is declared twice")
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
                raise invalid_argument("name", f"cron {cron_name!r} is declared twice")
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
        # checked now, not at start: a bad spec there would stop the whole cluster
        job_spec(name, _no_job_fn, retry=retry, timeout=timeout, priority=priority,
                 concurrency=concurrency)

        def declare(fn: Callable[..., Awaitable[Any]]) -> JobDefinition[Any]:
            spec = job_spec(name, fn, retry=retry, timeout=timeout, priority=priority,
                            concurrency=concurrency)
            if any(s.name == name for s in self._job_specs):
                raise invalid_argument("name", f"job {name!r} is declared twice")
            self._job_specs.append(spec)
            return JobDefinition(spec, lambda: self.jobs)

        return declare

    def workflow(
        self, name: str, *, version: int = 1,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Workflow]:
        """Declare a workflow: ``async def fn(ctx: covey.WorkflowContext, payload) -> result``.

        Declare it the same way on every member (runners run it; any member
        starts it). Returns the :class:`covey.Workflow` to pass to ``cluster.start``.

        Args:
            name: unique in the cluster; stored with each execution.
            version: an int >= 1, recorded with each execution: a runner whose
                declared version is older than an execution's leaves it to newer
                runners. Branch in-flight executions with ``ctx.patched``.

        Raises:
            ClusterError: ``invalid_argument`` naming the option (``details["field"]``)
                for a bad or repeated name, a bad version, or a function that is
                not ``async def fn(ctx, payload)``.
        """
        workflow_spec(name, version, _no_workflow_fn)  # checked now, not at start

        def declare(fn: Callable[..., Awaitable[Any]]) -> Workflow:
            spec = workflow_spec(name, version, fn)
            if name in self._workflows:
                raise invalid_argument("name", f"workflow {name!r} is declared twice")
            self._workflows[name] = spec
            return spec

        return declare

    def subscribe(
        self, events: type[Event] | Sequence[type[Event]], *, group: str,
        concurrency: int = 64, start: str = "latest", retry: Retry | None = None,
    ) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
        """Subscribe a group: ``async def handler(event: OrderPlaced, ctx: covey.EventContext)``.

        Every runner declaring the group shares its work by key; the group
        handles each event of its topics once, the events of one key in publish
        order. A handler that raises is retried in place (its key waits); after
        the last attempt the event goes to the group's dead-letter and the key
        moves on.

        Args:
            events: an event class, or a list of them (of one topic or several:
                the group gets a row per topic).
            group: the group's name (``[A-Za-z0-9._-]``, <= 200 bytes).
            concurrency: handler runs of the group at once on one runner.
            start: where a new group starts: ``latest`` (events published from
                now on) or ``earliest`` (every retained event).
            retry: a ``covey.Retry`` (default: 5 attempts, 0.1 s doubling to 30 s,
                with jitter).

        Raises:
            ClusterError: ``invalid_argument`` naming the option (``details["field"]``):
                not an event class or one without a topic, a bad group name, a
                concurrency that is not an int >= 1, an unknown start, a retry
                that is not a ``covey.Retry``, a handler that is not
                ``async def fn(event, ctx)``, a (group, topic) declared twice.
        """
        policy = _retry_policy(retry)
        subscriptions(events, _no_event_fn, group=group, concurrency=concurrency, start=start,
                      retry=policy)  # checked now, not at start

        def declare(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            made = subscriptions(events, fn, group=group, concurrency=concurrency,
                                 start=start, retry=policy)
            for sub in made:
                if any((s.group, s.topic) == (sub.group, sub.topic)
                       for s in self._subscriptions):
                    raise invalid_argument("group", f"group {group!r} subscribes to topic "
                                           f"{sub.topic!r} twice")
            self._subscriptions.extend(made)
            return fn

        return declare

    def webhook_type(self, name: str, model: Any) -> None:
        """Declare the payload model of a webhook message type.

        ``cluster.webhooks.send(name, payload)`` then validates the payload
        against ``model`` (a pydantic model or any type pydantic validates) and
        refuses a misfit with ``SerializationError`` before anything is stored.
        """
        self._webhook_types[check_type(name, field="name")] = model

    def webhook_events(
        self, events: type[Event] | Sequence[type[Event]], *, group: str = "covey.webhooks",
        type_of: Callable[[Any], str] | None = None, retry: Retry | None = None,
    ) -> None:
        """Deliver these domain events to the webhook endpoints that want them.

        A subscriber ``group`` sends each event once, with its delivery's commit,
        to every enabled endpoint of the publisher's tenant whose ``types`` match
        the message type: ``type_of(event)``, by default the event's stored type
        name (the class's ``name=`` option, else its class name). The
        ``webhook-id`` is ``evt_<event id>``: the same for every endpoint, and on
        every re-run of the group's handler.
        """
        if type_of is not None and not callable(type_of):
            raise invalid_argument("type_of", "must be a function of the event")

        async def forward(event: Any, ctx: Any) -> None:
            name = type_of(event) if type_of is not None else ctx.type
            await self.webhooks.send(name, event, id=f"evt_{ctx.event_id}",
                                     tenant=ctx.context.tenant_id, transaction=ctx)

        self.subscribe(events, group=group, retry=retry)(forward)
        self._forwards_events = True


def _retry_policy(retry: object) -> RetryPolicy | None:
    """A ``covey.Retry`` as the events' retry policy (``None``: the default)."""
    if retry is None:
        return None
    if not isinstance(retry, Retry):
        raise invalid_argument("retry", f"{retry!r} is not a covey.Retry")
    return RetryPolicy(retry.max_attempts, retry.backoff.initial, retry.backoff.maximum,
                       retry.backoff.factor, retry.jitter, retry.retry_on, retry.give_up_on)


async def _no_event_fn(event: Any, ctx: Any) -> None:
    """Stands in for an event handler while the declaration's options are checked."""


async def _no_fn(_: Any) -> None:
    """Stands in for the function while a declaration's options are checked."""


async def _no_workflow_fn(ctx: Any, payload: Any) -> None:
    """Stands in for a workflow function while the declaration's options are checked."""


async def _no_job_fn(job: Any, payload: Any) -> None:
    """Stands in for a job handler while the declaration's options are checked."""
