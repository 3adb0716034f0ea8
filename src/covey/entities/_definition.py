"""How an application declares entities: ``covey.Entity`` and ``@covey.rpc``.

An entity class names its type, its options and its RPC handlers::

    class Account(covey.Entity, type="Account", max_idle=120):
        balance: int = 0

        @covey.rpc(persisted=True, primary_key=lambda d: d.txn_id)
        async def deposit(self, cmd: Deposit) -> int: ...

Request and response types come from the handler's annotations (a pydantic
model or any type pydantic can validate); a handler takes zero or one argument.

With ``state=`` (a pydantic model) an entity has durable state: ``self.state``
is loaded on activation and committed with each persisted call's reply::

    class Cart(covey.Entity, type="Cart", state=CartState):
        @covey.rpc(persisted=True, primary_key=lambda c: c.id)
        async def add(self, cmd: Add) -> int:
            self.state.items.append(cmd.item)
            return len(self.state.items)
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, cast, overload

import pydantic

from covey.core import (
    DEFAULT_GROUP,
    MAX_NAME_BYTES,
    ClusterError,
    EntityAddress,
    EntityError,
    Reason,
    RunnerAddress,
)
from covey.core.runtime import check_text
from covey.entities._call import current_run, run_unit
from covey.storage import UnitOfWork

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
E = TypeVar("E", bound="Entity")

_NO_ARG = object()


@dataclass(frozen=True)
class RpcSpec:
    """One declared RPC of an entity type."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    request_type: Any  # _NO_ARG when the handler takes no argument
    response_type: Any
    persisted: bool
    primary_key: Callable[[Any], str] | None

    @property
    def takes_argument(self) -> bool:
        return self.request_type is not _NO_ARG


@dataclass(frozen=True)
class EntityOptions:
    """Per-type options.

    Attributes:
        concurrency: handlers of one instance that may run at once (1 = serial).
        mailbox_capacity: requests one instance may hold (running + waiting);
            a volatile request beyond it fails with ``mailbox_full``, a persisted
            one waits in storage.
        max_idle: seconds without requests after which an instance is dropped.
        keep_alive: never drop instances for idleness.
        shard_group: the shard group the type's entities live in.
    """

    concurrency: int = 1
    mailbox_capacity: int = 4096
    max_idle: float = 60.0
    keep_alive: bool = False
    shard_group: str = DEFAULT_GROUP


@dataclass(frozen=True)
class EntityContext:
    """What a handler knows about where it runs, and the effects of a persisted run.

    Inside a persisted RPC handler, :meth:`transaction`, :meth:`client` and
    ``job.submit(..., transaction=ctx)`` stage effects that commit in one
    transaction with the message's reply (and the entity's state), or not at
    all: the handler runs at least once, its effects exactly once.
    """

    address: EntityAddress
    runner: RunnerAddress | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def entity_id(self) -> str:
        return self.address.entity_id

    @property
    def shard(self) -> str:
        return str(self.address.shard)

    @property
    def request_id(self) -> int | None:
        """The id of the persisted message the current handler runs (the same on
        every run of it: use it as the idempotency key of calls to outside
        systems); ``None`` in a volatile handler."""
        run = current_run(self.address)
        return None if run is None else run.request_id

    async def transaction(self) -> Any:
        """The application's handle inside the transaction the run commits with.

        PostgreSQL: a ``PostgresTransaction`` whose ``execute`` / ``executemany``
        (``$1`` placeholders) are staged for the commit, and whose first read or
        ``connection()`` takes an asyncpg connection inside covey's transaction
        (reads then see the staged writes). SQLite: a
        ``SqliteTransaction`` (``await tx.execute(sql, *params)`` /
        ``executemany``, ``?`` placeholders) whose statements run inside the
        commit. Memory: a ``MemoryTransaction`` whose ``on_commit(fn)``
        callables run at commit. Writes made through it commit with the reply,
        or not at all (a handler that raises keeps none of them).

        Raises:
            EntityError: ``invalid_argument`` (field ``transaction``) outside a
                persisted RPC handler.
        """
        _, unit = run_unit(self.address, "transaction")
        return await unit.transaction()

    def client(self, entity_type: type[E], entity_id: str) -> E:
        """An outbox client: persisted calls made through it are stored with this
        run's commit (never if the handler raises), sent after it, and return
        ``None``.

        Raises:
            EntityError: ``invalid_argument`` (field ``client``) outside a
                persisted RPC handler; calling a volatile RPC through it is
                refused the same way (field ``rpc``).
        """
        run, unit = run_unit(self.address, "client")
        if run.outbox is None:
            raise EntityError("this runner has no outbox (entities hosted outside a cluster)",
                              reason=Reason.INVALID_ARGUMENT, field="client")
        return cast(E, run.outbox(entity_type, entity_id, unit))

    async def publish(self, event: Any, *, key: Any = None) -> int:
        """Publish a domain event with this run's commit: it exists (and is
        delivered to its groups) only if the handler succeeds; returns its id.
        ``key`` overrides the event class's partition key.

        Raises:
            EntityError: ``invalid_argument`` (field ``publish``) outside a
                persisted RPC handler.
            ClusterError: ``invalid_argument`` for an event that does not
                validate (the field named); nothing is staged then.
        """
        run, unit = run_unit(self.address, "publish")
        if run.publisher is None:
            raise EntityError("this runner publishes no events (entities hosted outside a "
                              "cluster)", reason=Reason.INVALID_ARGUMENT, field="publish")
        return (await run.publisher(unit, [(event, key)]))[0]

    def effect_unit(self, use: str) -> UnitOfWork:
        """The unit of work of the current persisted run (what ``transaction=self.ctx``
        stages on).

        Raises:
            EntityError: ``invalid_argument`` (``details["field"]`` is ``use``)
                outside a persisted RPC handler.
        """
        return run_unit(self.address, use)[1]


class Entity:
    """Base class of stateful entities: one live instance per id, cluster-wide.

    Subclass with ``type=`` (defaults to the class name) and options (see
    :class:`EntityOptions`). Annotated class attributes with defaults are copied
    into each new instance, so mutable defaults are safe. ``self.ctx`` is the
    instance's :class:`EntityContext`. Override ``on_start``/``on_stop`` for
    set-up and clean-up.

    ``state=`` (a pydantic model class) gives the entity durable state:
    ``self.state`` is loaded before ``on_start`` (a fresh model when none is
    stored). A persisted RPC's change to it commits with the reply, in one
    transaction fenced by the shard's epoch; a handler that raises leaves the
    last committed state. A volatile RPC sees the state; one that changes it
    fails with ``state_read_only`` (and the change is undone). Such an entity
    runs one handler at a time (``concurrency > 1`` is refused).
    """

    __covey_type__: ClassVar[str] = ""
    __covey_rpcs__: ClassVar[dict[str, RpcSpec]] = {}
    __covey_options__: ClassVar[EntityOptions] = EntityOptions()
    __covey_state__: ClassVar[type[pydantic.BaseModel] | None] = None

    ctx: EntityContext
    #: the durable state of an entity declared with ``state=`` (loaded on activation)
    state: Any

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        state: type[pydantic.BaseModel] | None = None,
        **options: Any,
    ) -> None:
        super().__init_subclass__()
        cls.__covey_type__ = type or cls.__name__
        # a name no backend can store is refused here, not at its first call
        check_text("type", cls.__covey_type__, max_bytes=MAX_NAME_BYTES)
        if "/" in cls.__covey_type__:
            raise ClusterError(f"invalid entity type name {cls.__covey_type__!r}",
                               reason=Reason.INVALID_ARGUMENT, field="type")
        try:
            cls.__covey_options__ = EntityOptions(**options)
        except TypeError as exc:
            raise ClusterError(f"{cls.__name__}: {exc}", reason=Reason.INVALID_ARGUMENT) from exc
        if cls.__covey_options__.concurrency < 1 or cls.__covey_options__.mailbox_capacity < 1:
            raise ClusterError(f"{cls.__name__}: concurrency and mailbox_capacity must be >= 1",
                               reason=Reason.INVALID_ARGUMENT)
        _declare_state(cls, state)
        rpcs: dict[str, RpcSpec] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                spec = getattr(value, "__covey_rpc__", None)
                if isinstance(spec, _PendingRpc):
                    rpcs[name] = spec.resolve(name)
        cls.__covey_rpcs__ = rpcs

    def __init__(self) -> None:
        for klass in reversed(type(self).__mro__):
            for name in getattr(klass, "__annotations__", {}):
                if name in ("ctx", "state") or name.startswith("__"):
                    continue
                if name in vars(klass) and not callable(vars(klass)[name]):
                    setattr(self, name, copy.deepcopy(vars(klass)[name]))

    async def on_start(self) -> None:
        """Called once when the instance is created on its runner."""

    async def on_stop(self) -> None:
        """Called when the instance is dropped (idle, shard moved, shutdown)."""


def _declare_state(cls: type[Entity], state: type[pydantic.BaseModel] | None) -> None:
    """Check and record ``state=`` (inherited from a stateful base when not given)."""
    if state is None:
        state = cls.__covey_state__
    elif not (isinstance(state, type) and issubclass(state, pydantic.BaseModel)):
        raise ClusterError(f"{cls.__name__}: state= must be a pydantic model class, "
                           f"not {state!r}", reason=Reason.INVALID_ARGUMENT, field="state")
    if state is not None and cls.__covey_options__.concurrency > 1:
        # one committed snapshot per instance: handlers that overlap would commit
        # each other's half-done changes
        raise ClusterError(f"{cls.__name__}: an entity with state= runs one handler at a time "
                           f"(concurrency={cls.__covey_options__.concurrency} is refused)",
                           reason=Reason.INVALID_ARGUMENT, field="concurrency")
    cls.__covey_state__ = state


@dataclass
class _PendingRpc:
    fn: Callable[..., Awaitable[Any]]
    persisted: bool
    primary_key: Callable[[Any], str] | None

    def resolve(self, name: str) -> RpcSpec:
        if not inspect.iscoroutinefunction(self.fn):
            raise ClusterError(f"@rpc handler {name} must be 'async def'",
                               reason=Reason.INVALID_ARGUMENT)
        hints = typing.get_type_hints(self.fn)
        params = list(inspect.signature(self.fn).parameters.values())[1:]  # drop self
        if len(params) > 1:
            raise ClusterError(f"@rpc handler {name} takes at most one argument",
                               reason=Reason.INVALID_ARGUMENT)
        request: Any = _NO_ARG
        if params:
            request = hints.get(params[0].name, Any)
        if self.primary_key is not None and not self.persisted:
            raise ClusterError(f"@rpc handler {name}: primary_key needs persisted=True",
                               reason=Reason.INVALID_ARGUMENT)
        return RpcSpec(name, self.fn, request, hints.get("return", Any),
                       self.persisted, self.primary_key)


@overload
def rpc(fn: F, /) -> F: ...
@overload
def rpc(
    *, persisted: bool = False, primary_key: Callable[[Any], str] | None = None
) -> Callable[[F], F]: ...
def rpc(
    fn: F | None = None,
    /,
    *,
    persisted: bool = False,
    primary_key: Callable[[Any], str] | None = None,
) -> F | Callable[[F], F]:
    """Mark an entity method as an RPC handler.

    Args:
        persisted: store the request before the call returns; it survives runner
            death and runs until it completes (at least once; its reply and
            processed flag commit together, so covey's own effect is once).
        primary_key: with ``persisted``, a function of the request giving its
            idempotency key; a second request with the same key returns the first
            one's reply without running the handler.
    """

    def mark(f: F) -> F:
        f.__covey_rpc__ = _PendingRpc(f, persisted, primary_key)  # type: ignore[attr-defined]
        return f

    if fn is not None:
        return mark(fn)
    return mark


def add_entity_type(types: dict[str, type[Entity]], entity_type: type[Entity]) -> None:
    """Add ``entity_type`` to ``types`` under its name (again is a no-op).

    Raises:
        ClusterError: ``invalid_argument`` for a class that is not a
            :class:`~covey.Entity` subclass, or another class with the same name.
    """
    name = entity_type.__covey_type__
    if not name:
        raise ClusterError(f"{entity_type!r} is not a covey.Entity subclass",
                           reason=Reason.INVALID_ARGUMENT)
    existing = types.get(name)
    if existing is not None and existing is not entity_type:
        raise ClusterError(f"entity type {name!r} is registered twice",
                           reason=Reason.INVALID_ARGUMENT)
    types[name] = entity_type
