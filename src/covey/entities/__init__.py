"""Layer 3: stateful entities, declared by the application, hosted by runners.

An application declares them with :class:`Entity` (options: :class:`EntityOptions`)
and :func:`rpc`; a handler learns where it runs from :class:`EntityContext`. A
lifecycle kept in an entity's state is a :class:`StateMachine`.
Hosting the live instances (:class:`~covey.entities.runtime.EntityRuntime`) and
the typed client behind ``cluster.client(...)`` are in
:mod:`covey.entities.runtime`.
"""

from covey.entities._definition import Entity, EntityContext, EntityOptions, rpc
from covey.entities._machine import StateMachine, Transition

__all__ = [
    "Entity",
    "EntityContext",
    "EntityOptions",
    "StateMachine",
    "Transition",
    "rpc",
]
