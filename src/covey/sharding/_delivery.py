"""The delivery registry: which deliverer runs a message of which entity type.

The messenger routes a message to its shard's owner; on the owner it asks this
registry who runs it. Entities are the default deliverer; features that ride on
messages (jobs, cron ticks, and later events, workflows, webhooks) register
their own entity type at assembly, so the sharding layer never needs to know
them and nothing above it has to sit between the two.
"""

from __future__ import annotations

from typing import Protocol

from covey.core import ClusterError, Reason, ShardId
from covey.sharding._envelope import Completed, Deferred, Envelope, Reschedule
from covey.storage import Reply, UnitOfWork


class Deliverer(Protocol):
    """Runs an envelope's handler on this runner."""

    async def deliver(self, envelope: Envelope,
                      unit: UnitOfWork | None = None
                      ) -> Reply | Reschedule | Completed | Deferred:
        """Run the handler; a handler failure is an error ``Reply``, not an exception.

        A persisted envelope may also be answered with :class:`Reschedule` (retry
        the same message later), :class:`Completed` (the deliverer completed it
        itself, fenced; nothing more is stored) or :class:`Deferred` (it stays
        stored as it is; the deliverer reads it back itself). It comes with
        ``unit``, the run's unit of work:
        what the deliverer stages on it commits with a successful reply, in one
        fenced transaction; an error reply, a reschedule or an exception discards
        it (``None``: a volatile envelope).

        Raises:
            EntityError: ``not_owner`` if the shard stopped while waiting,
                ``mailbox_full`` if the instance cannot take more.
        """
        ...

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop the work of ``shards`` (wait for their handlers if ``graceful``)."""
        ...


class DeliveryRegistry:
    """Entity type -> deliverer, with a default for every other type.

    A runner without a default (client-only) hosts nothing: :meth:`for_type`
    returns ``None`` and the messenger answers "not here".
    """

    def __init__(self, default: Deliverer | None = None) -> None:
        self._default = default
        self._by_type: dict[str, Deliverer] = {}

    def register(self, entity_type: str, deliverer: Deliverer) -> None:
        """Send messages of ``entity_type`` to ``deliverer``.

        Raises:
            ClusterError: ``invalid_argument`` if the type is registered already.
        """
        if entity_type in self._by_type:
            raise ClusterError(f"entity type {entity_type!r} already has a deliverer",
                               reason=Reason.INVALID_ARGUMENT, field="entity_type")
        self._by_type[entity_type] = deliverer

    def set_default(self, deliverer: Deliverer) -> None:
        """Deliver every type not registered on its own to ``deliverer``."""
        self._default = deliverer

    def for_type(self, entity_type: str) -> Deliverer | None:
        """Who runs ``entity_type`` here (``None``: nobody, this runner hosts nothing)."""
        return self._by_type.get(entity_type, self._default)

    def deliverers(self) -> list[Deliverer]:
        """Each distinct deliverer once, the registered ones first, the default last."""
        seen: list[Deliverer] = []
        for deliverer in [*self._by_type.values(), self._default]:
            if deliverer is not None and all(d is not deliverer for d in seen):
                seen.append(deliverer)
        return seen

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop ``shards`` in every deliverer (registered ones first, as today)."""
        for deliverer in self.deliverers():
            await deliverer.stop_shards(shards, graceful=graceful)
