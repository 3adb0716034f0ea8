"""Layer 3: stateful entities, declared by the application, hosted by runners.

:class:`Entity` and :func:`rpc` declare them; :class:`EntityRuntime` hosts the
live instances on a runner; :class:`EntityClient` calls them from anywhere.
"""

from covey.entities._client import EntityClient
from covey.entities._definition import Entity, EntityContext, EntityOptions, RpcSpec, rpc
from covey.entities._runtime import EntityRuntime

__all__ = [
    "Entity",
    "EntityClient",
    "EntityContext",
    "EntityOptions",
    "EntityRuntime",
    "RpcSpec",
    "rpc",
]
