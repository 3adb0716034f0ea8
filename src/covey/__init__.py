"""covey: run a Python application as many pods with zero coordination code.

The top-level namespace re-exports what an application needs on the common path;
everything else lives in the layer subpackages (``covey.core``,
``covey.storage``, …). See ``docs/`` for the guide.
"""

from covey.core import (
    ClusterError,
    ConfigError,
    CoveyConfig,
    EntityAddress,
    Reason,
    RunnerAddress,
    SerializationError,
    ShardId,
    SnowflakeGenerator,
    StorageError,
    StorageOptions,
)
from covey.storage import open_storage

__version__ = "0.1.0"

__all__ = [
    "ClusterError",
    "ConfigError",
    "CoveyConfig",
    "EntityAddress",
    "Reason",
    "RunnerAddress",
    "SerializationError",
    "ShardId",
    "SnowflakeGenerator",
    "StorageError",
    "StorageOptions",
    "__version__",
    "open_storage",
]
