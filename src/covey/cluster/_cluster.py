"""The Cluster facade: what an application holds.

``async with cluster:`` joins the cluster (storage, transport, membership, shard
ownership, delivery, reaper) and leaves it gracefully on exit: deregister first,
refuse new work with a retryable "not here", let in-flight handlers finish within
the grace period, release the shards. The facade declares, calls and runs the
lifecycle; the parts of a started member are built in one place
(:class:`~covey.cluster._assembly.Runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal, Self, TypeVar, cast, overload
from urllib.parse import urlsplit, urlunsplit

from covey.cluster._assembly import Runner
from covey.cluster._declaring import Declaring
from covey.core import (
    Clock,
    ClusterError,
    CoveyConfig,
    EntityAddress,
    MsgpackCodec,
    Reason,
    RunnerAddress,
    SystemClock,
)
from covey.core.runtime import configure_from_options, note_runner, shard_for
from covey.dashboard import Authorize, Dashboard
from covey.entities import Entity, EntityContext
from covey.entities.runtime import EntityClient, EntityRuntime, read_state, state_key
from covey.events import Event, Events
from covey.health import Health
from covey.jobs import Jobs
from covey.jobs.runtime import JobRunner
from covey.realtime import Cursor, Handshake, Subscription, sse_app
from covey.realtime.runtime import Contract, Presence, Streams, WebSocketApp, cluster_websocket
from covey.sharding import RunnerTransport, TcpTransport
from covey.sharding.runtime import Envelope, Messenger, Sharding, raise_error_reply
from covey.singletons import SingletonHealth
from covey.singletons.runtime import CronManager, SingletonManager
from covey.storage import Message, Storage, open_storage
from covey.webhooks import Webhooks
from covey.workflows import Workflow, WorkflowHandle, Workflows

log = logging.getLogger("covey.cluster")


E = TypeVar("E", bound=Entity)


class Cluster(Declaring):
    """One process's membership in a covey cluster.

    Args:
        config: settings; ``CoveyConfig.from_env()`` when omitted.
        client_only: route calls but host nothing (no shards, no listening port);
            also when ``config.client_only`` (``COVEY_CLIENT_ONLY=true``) is set.
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
        super().__init__()
        self.config = config or CoveyConfig.from_env()
        self.client_only = client_only or self.config.client_only  # COVEY_CLIENT_ONLY
        self._groups = groups
        self._weight = weight
        self._clock = clock or SystemClock()
        self.storage = storage or open_storage(self.config, clock=self._clock)
        self.transport: RunnerTransport = transport or TcpTransport(
            self.config.runner_host, self.config.runner_port,
            secret=self.config.cluster_secret, options=self.config.transport,
        )
        #: the health checks and the liveness/readiness probes (docs/health.md)
        self.health = Health(self.config.health, clock=self._clock)
        self._runner: Runner | None = None  # kept after stop, for inspection
        self._serving = False  # started, and neither stopped nor aborted
        self._crashed: BaseException | None = None
        self._stop = asyncio.Event()
        #: set when the member drains or stops: its SSE streams and WebSockets close
        self._closing = asyncio.Event()
        self._started = False

    @classmethod
    def from_env(cls, **kwargs: Any) -> Cluster:
        """A cluster configured from ``COVEY_*`` variables."""
        return cls(CoveyConfig.from_env(), **kwargs)

    @property
    def jobs(self) -> Jobs:
        """Status, results, cancel and the dead-letter of jobs."""
        return _part(self._started_runner().jobs)

    @property
    def webhooks(self) -> Webhooks:
        """Outgoing webhooks: endpoints, ``send``, deliveries and their dead-letter."""
        return _part(self._started_runner().webhooks)

    @property
    def streams(self) -> Streams:
        """Named streams: ``publish`` from any pod, ``subscribe`` (serve over SSE) on any pod."""
        return _part(self._started_runner().streams)

    @property
    def presence(self) -> Presence:
        """Which users have open connections where (``attach``), and ``send``."""
        return _part(self._started_runner().presence)

    async def send_to_user(self, user: str, message: Any, *, push: str = "message",
                           id: str | None = None, store: bool = False, ttl: float | None = None,
                           tenant: str | None = None) -> Literal["delivered", "stored", "dropped"]:
        """Hand ``message`` to every open connection of ``user``, on whichever pods hold
        them (:meth:`covey.realtime.Presence.send`): ``"delivered"``, ``"stored"``
        (``store=True`` and no connection took it: kept until a client acknowledges
        it, at most ``ttl`` seconds, and handed over, in order, when the user
        connects) or ``"dropped"``. With ``store=True`` a message is stored first
        and kept until acknowledged, so a pod that dies with it queued loses
        nothing."""
        return await self.presence.send(user, message, push=push, id=id, store=store, ttl=ttl,
                                        tenant=tenant)

    def websocket(self, contract: type[Contract], *, authenticate: Any = None,
                  **options: Any) -> WebSocketApp:
        """An ASGI app serving the WebSocket contract implementation ``contract``
        (:func:`covey.realtime.websocket_app`; ``options`` are its own), attached to
        this member: a connection whose principal names a user receives
        ``send_to_user`` messages (and its stored ones on connect); every connection
        closes with 1012 when the pod drains. Build it before or after ``start()``
        (connections are served while the member runs): ``WebSocketRoute("/rpc",
        cluster.websocket(ChatService, authenticate=...))``."""
        realtime = self.config.realtime
        options.setdefault("send_timeout", realtime.send_timeout)
        options.setdefault("queue_frames", realtime.buffer_items)
        options.setdefault("queue_bytes", realtime.buffer_bytes)
        return cluster_websocket(contract, lambda: self.presence, self._closing,
                                 authenticate=authenticate, **options)

    def sse(self, *, authorize: Any = None, heartbeat: float | None = None,
            send_timeout: float | None = None, retry_ms: int = 1000) -> Any:
        """An ASGI app serving this cluster's streams over SSE at ``<mount>/<stream>``
        (:func:`covey.realtime.sse_app`): resume from ``Last-Event-ID`` or
        ``?after=``, scoped to the request context's tenant, ``authorize(handshake,
        stream)`` deciding who reads what, every stream closed with ``retry:`` when
        the pod drains. Build it before or after ``start()``: ``Mount("/streams",
        app=cluster.sse(authorize=...))``."""
        async def subscribe(name: str, cursor: Cursor | None,
                            handshake: Handshake) -> Subscription:
            return await self.streams.subscribe(name, after=cursor, tenant=handshake.tenant)

        realtime = self.config.realtime
        return sse_app(subscribe, authorize=authorize, heartbeat=heartbeat or realtime.heartbeat,
                       send_timeout=send_timeout or realtime.send_timeout, retry_ms=retry_ms,
                       closing=self._closing)

    def dashboard(self, authorize: Authorize | None = None, *,
                  development: bool = False) -> Dashboard:
        """The operators' dashboard of this cluster, an ASGI app (``docs/dashboard.md``):
        ``Mount("/ops", app=cluster.dashboard(authorize=fn))``, ``fn(DashboardRequest)``
        returning the operator's name or ``None`` (403). Without ``authorize`` it
        refuses (``invalid_argument``) unless ``development=True``."""
        return Dashboard(self, authorize=authorize, development=development,
                         closing=self._closing, clock=self._clock)

    @property
    def events(self) -> Events:
        """The event log and its groups: topics, groups, lag, dead-letters, replay."""
        return _part(self._started_runner().events)

    async def publish(self, event: Event, *, key: Any = None, transaction: Any = None) -> int:
        """Publish a domain event to its topic's subscriber groups; returns its id.

        ``key`` overrides the class's partition key. ``transaction``: ``self.ctx`` of
        a persisted entity handler or an event handler's ``ctx`` (stored with its
        commit), or the application's connection inside its transaction (stored
        only if it commits). Raises ``ClusterError`` ``invalid_argument``
        (``details["field"]``) for a non-event or a field that does not validate;
        nothing is stored then.
        """
        return await self.events.publish(event, key=key, transaction=transaction)

    async def publish_many(self, events: Sequence[Event | tuple[Event, Any]], *,
                           transaction: Any = None) -> list[int]:
        """Publish several events in one transaction (``(event, key)`` pairs choose
        their keys); their ids, in order. Checked whole: one bad event stores none."""
        return await self.events.publish_many(events, transaction=transaction)

    @property
    def workflows(self) -> Workflows:
        """Workflow executions: status, results, cancel, resume, list, journals."""
        return _part(self._started_runner().workflows)

    async def send(self, workflow_id: str, topic: str, payload: Any, *,
                   idempotency_key: str | None = None) -> None:
        """Send ``payload`` to ``ctx.recv(topic)`` of workflow ``workflow_id``
        (consumed once; a repeated ``idempotency_key`` is sent once)."""
        await self.workflows.send(workflow_id, topic, payload, idempotency_key=idempotency_key)

    async def get_event(self, workflow_id: str, key: str, *,
                        timeout: float | None = None) -> Any:
        """What the workflow published with ``ctx.set_event(key, ...)`` (``None``:
        not within ``timeout`` seconds)."""
        return await self.workflows.get_event(workflow_id, key, timeout=timeout)

    async def resolve(self, token: str, value: Any) -> None:
        """Resolve the awakeable of ``token`` with ``value`` (a forged token:
        ``WorkflowError`` ``token_invalid``)."""
        await self.workflows.resolve(token, value)

    def _also_host(self, entity_type: type[Entity]) -> None:
        if self._runner is not None and self._runner.entities is not None:
            self._runner.entities.register(entity_type)

    async def singleton_health(self) -> dict[str, SingletonHealth]:
        """Per singleton: healthy (beating within twice its expected interval)?"""
        return await self.singletons.health()

    @property
    def singletons(self) -> SingletonManager:
        return _part(self._started_runner().singletons)

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
                ``None``. Or ``self.ctx`` in a persisted entity handler: the same
                as ``self.ctx.client(entity_type, entity_id)`` (stored with the
                handler's commit, any backend).
        """
        if isinstance(transaction, EntityContext):
            return transaction.client(entity_type, entity_id)
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

    async def state_of(self, entity_type: type[Entity], entity_id: str) -> Any:
        """The last committed durable state of one entity, read from storage.

        For dashboards and tests: nothing is routed and no instance is activated
        (a handler running now may have changed it since, uncommitted). Stored
        snapshots of older versions are upcast; ``None`` when the entity never
        committed any state.

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"]``:
                ``entity_type`` for a class that is not an entity or has no
                ``state=``, ``entity_id`` for an id no entity can have).
            EntityError: ``state_version_unknown`` for a snapshot written by
                newer code (left as it is).
        """
        runner = self._started_runner()
        model = getattr(entity_type, "__covey_state__", None)
        name = getattr(entity_type, "__covey_type__", "")
        if not name or model is None:
            what = "is not a covey.Entity subclass" if not name else "declares no state="
            raise ClusterError(f"{entity_type!r} {what}: it has no durable state to read",
                               reason=Reason.INVALID_ARGUMENT, field="entity_type")
        # the limits of every entity id, checked where its address would be built
        shard_for(entity_id, self.config.shards, entity_type.__covey_options__.shard_group)
        return await read_state(runner.storage.state, model, state_key(name, entity_id))

    def snowflake(self) -> int:
        """A cluster-wide unique, time-ordered 64-bit id."""
        return self.sharding.snowflake.next_id()

    # ---- state -----------------------------------------------------------

    @property
    def sharding(self) -> Sharding:
        return _part(self._started_runner().sharding)

    @property
    def messenger(self) -> Messenger:
        return _part(self._started_runner().messenger)

    @property
    def runtime(self) -> EntityRuntime:
        """The entity instances this runner hosts (none on a client-only member)."""
        return _part(self._started_runner().entities)

    @property
    def job_runner(self) -> JobRunner | None:
        """The jobs running here (``None`` before start and on a client-only member)."""
        return None if self._runner is None else self._runner.job_runner

    @property
    def crons(self) -> CronManager | None:
        """The cron schedules kept here (``None`` without crons or before start)."""
        return None if self._runner is None else self._runner.crons

    @property
    def address(self) -> RunnerAddress | None:
        sharding = None if self._runner is None else self._runner.sharding
        return None if sharding is None else sharding.address

    @property
    def crashed(self) -> BaseException | None:
        """The error of a background task that crashed and stopped this runner, if any."""
        return self._crashed

    def _started_runner(self) -> Runner:
        if self._runner is None:
            raise self._not_started()
        return self._runner

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
        await self._join()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @overload
    async def start(self) -> None: ...
    @overload
    async def start(self, workflow: Workflow | str, payload: Any, *,
                    workflow_id: str | None = None,
                    transaction: Any = None) -> WorkflowHandle: ...
    async def start(self, workflow: Workflow | str | None = None, payload: Any = None, *,
                    workflow_id: str | None = None,
                    transaction: Any = None) -> WorkflowHandle | None:
        """``start()``: join the cluster (see :meth:`_join`). ``start(workflow,
        payload, workflow_id=...)``: start a workflow execution and return its handle.

        ``workflow_id`` is the idempotency key: a second start with the same id
        returns a handle to the same execution. ``transaction``: the application's
        connection inside its transaction (started only if it commits; PostgreSQL)
        or ``self.ctx`` of a persisted handler (started with its commit).

        Raises:
            WorkflowError: ``unknown_workflow``; SerializationError: a payload that
                does not validate (the field named); nothing is stored then.
        """
        if workflow is None:
            if payload is not None or workflow_id is not None or transaction is not None:
                raise ClusterError("start(workflow, payload, ...): the workflow is missing "
                                   "(start() with no argument joins the cluster)",
                                   reason=Reason.INVALID_ARGUMENT, field="workflow")
            await self._join()
            return None
        return await self.workflows.start(workflow, payload, workflow_id=workflow_id,
                                          transaction=transaction)

    async def _join(self) -> None:
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
        configure_from_options(self.config.log)  # COVEY_LOG_LEVEL / COVEY_LOG_FORMAT
        runner = self._runner = Runner(
            self.config, self.storage, self.transport, self._clock,
            client_only=self.client_only, groups=self._groups, weight=self._weight,
            on_crash=self._on_crash, health=self.health)
        try:
            await runner.start(self.declarations())
        except BaseException:
            log.warning("runner start failed; closing what it opened")
            with contextlib.suppress(Exception):  # logged there; the start's error matters
                await runner.close()
            raise
        self._serving = True
        self._closing.clear()
        sharding = _part(runner.sharding)
        if sharding.address is not None:
            note_runner(str(sharding.address))  # log lines name it (docs/logging.md)
        log.info("runner %s joined (machine id %d, %d shards owned)",
                 sharding.address or "client-only", sharding.machine_id, len(sharding.owned))

    def _on_crash(self, error: BaseException) -> None:
        self._crashed = self._crashed or error
        self._stop.set()  # serve() returns and leaves

    async def stop(self) -> None:
        """Leave gracefully (see the module docstring)."""
        if not self._serving or self._runner is None:
            return  # not started, stopped, aborted, or a failed start closed itself
        self._serving = False
        self._closing.set()
        self.health.start_draining()  # readiness fails before anything stops
        try:
            await self._runner.close()
        finally:
            if self.address is not None:
                note_runner(str(self.address), present=False)
        log.info("runner %s left", self.address or "client-only")

    async def drain(self) -> None:
        """The first step of a graceful exit: readiness fails, the shards move, serving goes on.

        ``cluster.health.ready()`` fails from now on, so load balancers that
        follow readiness move away; the runner hands all its shards to its
        peers at once (its entities, singletons, cron and jobs run there from
        now on), while this member keeps serving HTTP and calling entities.
        :meth:`stop` completes the exit (deregister, release what is left).
        Does nothing unless started.

        The runner stays registered, serving no shard group, until :meth:`stop`: its
        registration holds its snowflake machine id, and a draining web pod
        still makes ids (request, message and job ids) while a new pod may be
        starting; unregistering now would let that pod take the same machine id.
        A hand-over that fails (the database is away) is logged; :meth:`stop`
        releases the shards then.
        """
        if not self._serving or self._runner is None:
            return
        self.health.start_draining()  # readiness fails at once
        self._closing.set()  # SSE streams and WebSockets close: clients go to another pod
        try:
            await self._runner.drain()
        except ClusterError as exc:
            log.warning("runner %s could not hand its shards over while draining (%s); "
                        "they are released at stop()", self.address or "client-only", exc)
        log.info("runner %s draining: readiness fails, shards handed over; it leaves at stop()",
                 self.address or "client-only")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The cluster for the lifetime of an ASGI app: ``FastAPI(lifespan=cluster.lifespan)``.

        Starts the cluster at the app's startup and leaves gracefully at its
        shutdown. Inside a lifespan of your own: ``async with cluster.lifespan(app):``.
        """
        async with self:
            yield

    async def abort(self) -> None:
        """Stop at once, without the graceful hand-over: as if the process died.

        Every task of the runner is cancelled and the transport and storage are
        closed, but the runner does not deregister and does not release its
        shards: peers take them over once its heartbeat and locks expire
        (``runner_ttl``), and run again what it had not completed. For tests of
        crash recovery, and for a process that must exit now.
        """
        if not self._serving or self._runner is None:
            return
        self._serving = False
        self._stop.set()  # serve() returns
        await self._runner.abort()
        log.warning("runner %s aborted", self.address or "client-only")
        if self.address is not None:
            note_runner(str(self.address), present=False)

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


P = TypeVar("P")


def _part(part: P | None) -> P:
    """A part of a started runner that this member has (client-only ones lack some)."""
    if part is None:
        raise ClusterError("this cluster member does not run that part (client-only?)",
                           reason=Reason.INVALID_ARGUMENT)
    return part


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
