"""What one handler run knows beyond its instance: the persisted message it runs,
and the unit of work its effects commit with.

An instance's :class:`~covey.entities.EntityContext` is shared by every call
of the instance; the facts of one run live in a context variable set just
before the handler's task is created (the task copies it), so concurrent
handlers of one instance each see their own.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from covey.core import EntityAddress, EntityError, Reason
from covey.storage import UnitOfWork

#: builds the outbox client of ``ctx.client(entity_type, entity_id)`` for a unit
OutboxFactory = Callable[[Any, str, UnitOfWork], Any]
#: stages events on a unit: ``(unit, [(event, key)]) -> event ids`` (``ctx.publish``)
EventStager = Callable[[UnitOfWork, Sequence[tuple[Any, Any]]], Awaitable[list[int]]]


@runtime_checkable
class EffectScope(Protocol):
    """A persisted run whose effects commit with its completion: what features
    accept as ``transaction=`` to stage their messages on the run's unit of work
    (an entity's ``self.ctx``, an event handler's ``ctx``)."""

    def effect_unit(self, use: str) -> UnitOfWork:
        """The unit of work of the current run.

        Raises:
            EntityError: ``invalid_argument`` (``details["field"]`` is ``use``)
                outside a persisted run.
        """
        ...


class HandlerRun:
    """One run of a persisted message's handler (read-only by convention: a plain
    slotted class, made on every persisted call, is cheaper than a frozen one)."""

    __slots__ = ("address", "outbox", "publisher", "request_id", "unit")

    def __init__(self, address: EntityAddress, request_id: int, unit: UnitOfWork | None,
                 outbox: OutboxFactory | None, publisher: EventStager | None = None) -> None:
        self.address = address
        self.request_id = request_id
        self.unit = unit
        self.outbox = outbox
        self.publisher = publisher


#: the persisted run the current task belongs to (``None``: a volatile call, or
#: no handler at all)
CURRENT_RUN: contextvars.ContextVar[HandlerRun | None] = contextvars.ContextVar(
    "covey_handler_run", default=None)


def current_run(address: EntityAddress) -> HandlerRun | None:
    """The persisted run of the entity at ``address`` this task belongs to, if any."""
    run = CURRENT_RUN.get()
    return run if run is not None and run.address == address else None


def run_unit(address: EntityAddress, use: str) -> tuple[HandlerRun, UnitOfWork]:
    """The run and unit of work of the current persisted handler of ``address``.

    Raises:
        EntityError: ``invalid_argument`` (``details["field"]`` is ``use``)
            outside a persisted handler of that entity.
    """
    run = current_run(address)
    if run is None or run.unit is None:
        raise EntityError(
            f"ctx.{use} is only available inside a persisted RPC handler of {address}: "
            "its effects commit with the message's reply",
            reason=Reason.INVALID_ARGUMENT, field=use)
    return run, run.unit
