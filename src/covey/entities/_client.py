"""Typed clients: ``cluster.client(Account, "acct-1").deposit(cmd)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from covey.core import (
    EntityAddress,
    MsgpackCodec,
    SnowflakeGenerator,
    current_context,
    shard_for,
    to_plain,
    validate,
)
from covey.entities._definition import Entity, RpcSpec
from covey.sharding import Envelope, Messenger, raise_error_reply
from covey.storage import Message

_MISSING: Any = object()


class EntityClient:
    """A proxy whose methods are the entity's RPCs, called remotely.

    Each call serializes its argument, routes it to the entity's owner and
    decodes the reply into the handler's declared return type. A handler that
    raised comes back as :class:`covey.EntityError` (``details["error_type"]``
    and ``details["message"]`` describe the remote exception).
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
    ) -> None:
        self._messenger = messenger
        self._snowflake = snowflake
        self._type = entity_type
        self._timeout = timeout
        self._discard = discard
        self._headers = headers
        self._transaction = transaction
        self._codec = MsgpackCodec()
        group = entity_type.__covey_options__.shard_group
        self.address = EntityAddress(
            entity_type.__covey_type__, entity_id, shard_for(entity_id, shards, group)
        )

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        spec = self._type.__covey_rpcs__.get(name)
        if spec is None:
            raise AttributeError(f"{self._type.__name__} has no rpc {name!r}")

        async def call(argument: Any = _MISSING) -> Any:
            return await self._call(spec, argument)

        call.__name__ = name
        return call

    async def _call(self, spec: RpcSpec, argument: Any) -> Any:
        if spec.takes_argument:
            if argument is _MISSING:
                raise TypeError(f"{spec.name}() needs its argument")
            declared = spec.request_type
            if not (isinstance(declared, type) and isinstance(argument, declared)):
                argument = validate(to_plain(argument), declared)  # typed error before sending
            payload = self._codec.encode(argument)
        else:
            payload = b""
        message = Message(
            id=self._snowflake.next_id(),
            address=self.address,
            tag=spec.name,
            payload=payload,
            headers=dict(self._headers()) if self._headers else current_context().to_headers(),
            primary_key=spec.primary_key(argument) if spec.primary_key else None,
        )
        reply = await self._messenger.call(
            Envelope(message, spec.persisted), timeout=self._timeout, discard=self._discard,
            transaction=self._transaction,
        )
        if reply is None:
            return None
        if reply.is_error:
            raise_error_reply(reply, f"{self.address.entity_type}.{spec.name}")
        return self._codec.decode(reply.payload, spec.response_type)
