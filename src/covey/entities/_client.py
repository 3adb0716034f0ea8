"""Typed clients: ``cluster.client(Account, "acct-1").deposit(cmd)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from covey.core import (
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    REQUEST_HEADER,
    TENANT_HEADER,
    EntityAddress,
    EntityError,
    MsgpackCodec,
    Reason,
    SnowflakeGenerator,
    current_context,
)
from covey.core.runtime import check_text, producer_span, shard_for, validate_value
from covey.entities._definition import Entity, RpcSpec
from covey.sharding.runtime import Envelope, Messenger, raise_error_reply
from covey.storage import Message, UnitOfWork

_MISSING: Any = object()


class _UnknownRpc(EntityError, AttributeError):
    """An ``EntityError`` (reason ``unknown_rpc``) that is also an ``AttributeError``,
    so ``hasattr`` and ``getattr`` with a default keep working on clients."""

    default_reason = Reason.UNKNOWN_RPC


class EntityClient:
    """A proxy whose methods are the entity's RPCs, called remotely.

    Each call serializes its argument, routes it to the entity's owner and
    decodes the reply into the handler's declared return type. A handler that
    raised comes back as :class:`covey.EntityError` (``details["error_type"]``
    and ``details["message"]`` describe the remote exception).

    What the client can know is refused before anything is sent or stored, with
    a non-retryable error: an entity id that breaks its limits
    (``invalid_argument``, raised by the constructor), an RPC the type does not
    declare (``unknown_rpc``), a missing or superfluous argument
    (``invalid_argument``).

    With ``outbox`` (a persisted handler's unit of work: ``ctx.client(...)``)
    persisted calls are staged on the unit, stored with its commit, sent after
    it, and return ``None``; a volatile RPC is refused (``invalid_argument``).
    """

    def __init__(
        self,
        messenger: Messenger,
        snowflake: SnowflakeGenerator,
        entity_type: type[Entity],
        entity_id: str,
        *,
        shards: int,
        timeout: float,
        discard: bool,
        headers: Callable[[], Mapping[str, str]] | None = None,
        transaction: Any = None,
        outbox: UnitOfWork | None = None,
    ) -> None:
        self._messenger = messenger
        self._outbox = outbox
        self._snowflake = snowflake
        self._type = entity_type
        self._timeout = timeout
        self._discard = discard
        self._headers = headers
        self._transaction = transaction
        self._codec = MsgpackCodec()
        group = entity_type.__covey_options__.shard_group
        name = check_text("entity_type", entity_type.__covey_type__, max_bytes=MAX_NAME_BYTES)
        # shard_for refuses an id no backend can store, before any call is made
        self.address = EntityAddress(name, entity_id, shard_for(entity_id, shards, group))

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        spec = self._type.__covey_rpcs__.get(name)
        if spec is None:
            if name.startswith("_"):  # probing by Python and tools (copy, pickle, IPython)
                raise AttributeError(name)
            raise _UnknownRpc(f"{self._type.__name__} has no rpc {name!r}",
                             entity_type=self.address.entity_type, rpc=name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if kwargs or len(args) > 1:
                raise EntityError(f"{name}() takes at most one positional argument",
                                  reason=Reason.INVALID_ARGUMENT, field="argument", rpc=name)
            return await self._call(spec, args[0] if args else _MISSING)

        call.__name__ = name
        return call

    async def _call(self, spec: RpcSpec, argument: Any) -> Any:
        if spec.takes_argument:
            if argument is _MISSING:
                raise EntityError(f"{spec.name}() needs its argument",
                                  reason=Reason.INVALID_ARGUMENT, field="argument", rpc=spec.name)
            # validated even when it is an instance of the declared type (typed error)
            argument = validate_value(argument, spec.request_type)
        elif argument is not _MISSING:
            raise EntityError(f"{spec.name}() takes no argument",
                              reason=Reason.INVALID_ARGUMENT, field="argument", rpc=spec.name)
        primary_key = spec.primary_key(argument) if spec.primary_key else None
        if primary_key is not None:
            # before encoding: a key the payload cannot carry either (a lone
            # surrogate) is refused as the key it is, invalid_argument
            check_text("primary_key", primary_key, max_bytes=MAX_KEY_BYTES)
        payload = self._codec.encode(argument) if spec.takes_argument else b""
        headers = dict(self._headers()) if self._headers else current_context().to_headers()
        message_id = self._snowflake.next_id()
        # the span's traceparent goes into the headers before the message exists
        with producer_span(f"send {self.address.entity_type}.{spec.name}", headers,
                           kind="producer" if spec.persisted else "client",
                           attributes=lambda: _send_attributes(self.address, message_id, headers),
                           details=lambda: _send_details(self.address, spec)):
            message = Message(id=message_id, address=self.address, tag=spec.name,
                              payload=payload, headers=headers, primary_key=primary_key)
            if self._outbox is not None:
                self._stage(spec, message)
                return None
            reply = await self._messenger.call(
                Envelope(message, spec.persisted), timeout=self._timeout, discard=self._discard,
                transaction=self._transaction,
            )
            if reply is None:
                return None
            if reply.is_error:
                raise_error_reply(reply, f"{self.address.entity_type}.{spec.name}")
            return self._codec.decode(reply.payload, spec.response_type)

    def _stage(self, spec: RpcSpec, message: Message) -> None:
        if not spec.persisted:
            raise EntityError(
                f"{self.address.entity_type}.{spec.name} is volatile: ctx.client() sends "
                "persisted RPCs only (they are stored with the handler's commit); call "
                "volatile ones through cluster.client()",
                reason=Reason.INVALID_ARGUMENT, field="rpc", rpc=spec.name)
        assert self._outbox is not None
        self._outbox.send([self._messenger.checked(message)])


def _send_attributes(address: EntityAddress, message_id: int,
                     headers: Mapping[str, str]) -> dict[str, str]:
    """The attributes of every ``send`` span (docs/tracing.md lists them)."""
    attributes = {
        "messaging.system": "covey",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": address.entity_type,
        "messaging.message.id": str(message_id),
    }
    # the request context's, when there is one (none: no attribute, no cost)
    if (tenant := headers.get(TENANT_HEADER)) is not None:
        attributes["covey.tenant"] = tenant
    if (request_id := headers.get(REQUEST_HEADER)) is not None:
        attributes["covey.request_id"] = request_id
    return attributes


def _send_details(address: EntityAddress, spec: RpcSpec) -> dict[str, str]:
    """What a ``send`` span adds with covey's detailed attributes on."""
    return {"covey.entity.id": address.entity_id, "covey.rpc": spec.name,
            "covey.shard": str(address.shard)}


@dataclass(frozen=True)
class OutboxClients:
    """What ``ctx.client(entity_type, entity_id)`` needs of its runner: builds the
    outbox client of a persisted run's unit of work."""

    messenger: Messenger
    snowflake: SnowflakeGenerator
    shards: int

    def __call__(self, entity_type: type[Entity], entity_id: str,
                 unit: UnitOfWork) -> EntityClient:
        # timeout: never used, an outbox call does not wait for its reply
        return EntityClient(self.messenger, self.snowflake, entity_type, entity_id,
                            shards=self.shards, timeout=0.0, discard=True, outbox=unit)
