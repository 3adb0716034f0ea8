"""How an application declares entities: ``covey.Entity`` and ``@covey.rpc``.

An entity class names its type, its options and its RPC handlers::

    class Account(covey.Entity, type="Account", max_idle=120):
        balance: int = 0

        @covey.rpc(persisted=True, primary_key=lambda d: d.txn_id)
        async def deposit(self, cmd: Deposit) -> int: ...

Request and response types come from the handler's annotations (a pydantic
model or any type pydantic can validate); a handler takes zero or one argument.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, overload

from covey.core import (
    DEFAULT_GROUP,
    MAX_NAME_BYTES,
    ClusterError,
    EntityAddress,
    Reason,
    RunnerAddress,
)
from covey.core.runtime import check_text

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

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
    """What a handler knows about where it runs."""

    address: EntityAddress
    runner: RunnerAddress | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def entity_id(self) -> str:
        return self.address.entity_id

    @property
    def shard(self) -> str:
        return str(self.address.shard)


class Entity:
    """Base class of stateful entities: one live instance per id, cluster-wide.

    Subclass with ``type=`` (defaults to the class name) and options (see
    :class:`EntityOptions`). Annotated class attributes with defaults are copied
    into each new instance, so mutable defaults are safe. ``self.ctx`` is the
    instance's :class:`EntityContext`. Override ``on_start``/``on_stop`` for
    set-up and clean-up.
    """

    __covey_type__: ClassVar[str] = ""
    __covey_rpcs__: ClassVar[dict[str, RpcSpec]] = {}
    __covey_options__: ClassVar[EntityOptions] = EntityOptions()

    ctx: EntityContext

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
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
                if name in ("ctx",) or name.startswith("__"):
                    continue
                if name in vars(klass) and not callable(vars(klass)[name]):
                    setattr(self, name, copy.deepcopy(vars(klass)[name]))

    async def on_start(self) -> None:
        """Called once when the instance is created on its runner."""

    async def on_stop(self) -> None:
        """Called when the instance is dropped (idle, shard moved, shutdown)."""


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

