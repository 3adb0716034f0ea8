"""covey: run a Python application as many pods with zero coordination code.

The top-level namespace re-exports what an application needs on the common path;
everything else lives in the layer subpackages (``covey.core``,
``covey.storage``, ``covey.sharding``, ``covey.entities``, …). See ``docs/``.
"""

from covey.cluster import Cluster
from covey.core import (
    ClusterError,
    ClusterPlacement,
    ConfigError,
    CoveyConfig,
    EntityAddress,
    EntityError,
    Reason,
    RequestContext,
    RunnerAddress,
    SerializationError,
    ShardId,
    SnowflakeGenerator,
    StorageError,
    StorageOptions,
    TransportError,
    current_context,
    use_context,
)
from covey.entities import Entity, EntityContext, rpc
from covey.singletons import CronTick, SingletonContext
from covey.storage import open_storage

__version__ = "0.1.0"

__all__ = [
    "Cluster",
    "ClusterError",
    "ClusterPlacement",
    "ConfigError",
    "CoveyConfig",
    "CronTick",
    "Entity",
    "EntityAddress",
    "EntityContext",
    "EntityError",
    "Reason",
    "RequestContext",
    "RunnerAddress",
    "SerializationError",
    "ShardId",
    "SingletonContext",
    "SnowflakeGenerator",
    "StorageError",
    "StorageOptions",
    "TransportError",
    "__version__",
    "current_context",
    "open_storage",
    "rpc",
    "use_context",
]
