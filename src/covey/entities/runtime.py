"""What covey's assembly wires to host and call entities; not for applications.

``covey.cluster`` builds one :class:`EntityRuntime` per runner (the default
deliverer of the messenger's delivery registry) and hands out
:class:`EntityClient` proxies from ``cluster.client(...)``. An application
declares entities with :mod:`covey.entities`; nothing here is stable API.
"""

from covey.entities._client import EntityClient
from covey.entities._definition import RpcSpec
from covey.entities._runtime import EntityRuntime, add_entity_type

__all__ = [
    "EntityClient",
    "EntityRuntime",
    "RpcSpec",
    "add_entity_type",
]
