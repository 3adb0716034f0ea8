"""What covey's assembly wires to host and call entities; not for applications.

``covey.cluster`` builds one :class:`EntityRuntime` per runner (the default
deliverer of the messenger's delivery registry) and hands out
:class:`EntityClient` proxies from ``cluster.client(...)``. An application
declares entities with :mod:`covey.entities`; nothing here is stable API.
"""

from covey.entities._call import EffectScope, EventStager, run_unit
from covey.entities._client import EntityClient, OutboxClients
from covey.entities._definition import EntityContext, RpcSpec, add_entity_type
from covey.entities._runtime import EntityRuntime
from covey.entities._state import STATE_KEY_PREFIX, read_state, state_key
from covey.storage import UnitOfWork

__all__ = [
    "EffectScope",
    "EntityClient",
    "EntityRuntime",
    "EventStager",
    "OutboxClients",
    "RpcSpec",
    "STATE_KEY_PREFIX",
    "add_entity_type",
    "handler_unit",
    "read_state",
    "state_key",
]


def handler_unit(ctx: EntityContext, use: str) -> UnitOfWork:
    """The unit of work of the persisted handler run ``ctx`` belongs to, for a
    feature that stages its own messages on it (``job.submit(...,
    transaction=ctx)``).

    Raises:
        EntityError: ``invalid_argument`` (``details["field"]`` is ``use``)
            outside a persisted RPC handler.
    """
    return run_unit(ctx.address, use)[1]
