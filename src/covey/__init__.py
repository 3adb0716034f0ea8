"""covey: run a Python application as many pods with zero coordination code.

The top-level namespace re-exports what an application needs on the common path;
everything else lives in the layer subpackages (``covey.core``,
``covey.storage``, ``covey.sharding``, ``covey.entities``, …). See ``docs/``.
"""

from covey import context as context  # the ASGI middleware: covey.context.RequestContextMiddleware
from covey.cluster import Cluster
from covey.core import (
    ClusterError,
    ClusterPlacement,
    ConfigError,
    CoveyConfig,
    EntityAddress,
    EntityError,
    JobError,
    RealtimeError,
    Reason,
    RequestContext,
    RunnerAddress,
    SerializationError,
    ShardId,
    SnowflakeGenerator,
    StorageError,
    StorageOptions,
    TransportError,
    WebhookError,
    WorkflowError,
    configure_logging,
    current_context,
    upcaster,
    use_context,
)
from covey.entities import Entity, EntityContext, StateMachine, rpc
from covey.events import Event, EventContext
from covey.jobs import JobContext, JobHandle, JobStatus, Retry, exponential
from covey.singletons import CronTick, SingletonContext
from covey.storage import open_storage
from covey.workflows import (
    Awakeable,
    JournalEntry,
    Workflow,
    WorkflowContext,
    WorkflowHandle,
    WorkflowStatus,
)

__version__ = "0.1.0"

__all__ = [
    "Awakeable",
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
    "Event",
    "EventContext",
    "JobContext",
    "JobError",
    "JobHandle",
    "JobStatus",
    "JournalEntry",
    "RealtimeError",
    "Reason",
    "RequestContext",
    "Retry",
    "RunnerAddress",
    "SerializationError",
    "ShardId",
    "SingletonContext",
    "SnowflakeGenerator",
    "StateMachine",
    "StorageError",
    "StorageOptions",
    "TransportError",
    "WebhookError",
    "Workflow",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowHandle",
    "WorkflowStatus",
    "__version__",
    "configure_logging",
    "current_context",
    "exponential",
    "open_storage",
    "rpc",
    "upcaster",
    "use_context",
]
