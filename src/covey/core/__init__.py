"""Layer 0: the vocabulary every other layer speaks.

Identifiers (shards, entity and runner addresses, snowflake ids), the one error
tree, serialization of typed payloads, configuration, the clock and the versions
of stored data (:func:`upcaster`). Nothing here does I/O. The helpers the other
layers build with (argument checks, hashing, validation, the task set) are in
:mod:`covey.core.runtime`.
"""

from covey.core._clock import Clock, SystemClock, TestClock
from covey.core._config import (
    DEFAULT_DATABASE_URL,
    CoveyConfig,
    HealthOptions,
    RealtimeOptions,
    ShardingOptions,
    StorageOptions,
    TransportOptions,
    WebhookOptions,
)
from covey.core._errors import (
    AlreadyProcessed,
    ClusterError,
    ConfigError,
    EntityError,
    FencedOut,
    JobError,
    MessageNotFound,
    MigrationError,
    RealtimeError,
    Reason,
    SerializationError,
    ShardCountMismatch,
    StorageError,
    TransportError,
    VersionConflict,
    WebhookError,
    WorkflowError,
)
from covey.core._ids import (
    DEFAULT_GROUP,
    MAX_ENTITY_ID_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    EntityAddress,
    RunnerAddress,
    ShardId,
)
from covey.core._logs import LogOptions, configure_logging
from covey.core._request import (
    REQUEST_HEADER,
    TENANT_HEADER,
    TRACEPARENT_HEADER,
    USER_HEADER,
    ClusterPlacement,
    RequestContext,
    current_context,
    use_context,
)
from covey.core._serialization import (
    Codec,
    JsonCodec,
    MsgpackCodec,
)
from covey.core._snowflake import (
    EPOCH_MS,
    MAX_MACHINE_ID,
    SnowflakeGenerator,
    SnowflakeParts,
    parse_snowflake,
)
from covey.core._upcasting import upcaster

__all__ = [
    "AlreadyProcessed",
    "Clock",
    "ClusterError",
    "ClusterPlacement",
    "Codec",
    "ConfigError",
    "CoveyConfig",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_GROUP",
    "EPOCH_MS",
    "EntityAddress",
    "EntityError",
    "FencedOut",
    "HealthOptions",
    "JobError",
    "JsonCodec",
    "LogOptions",
    "MAX_ENTITY_ID_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE_BYTES",
    "MAX_KEY_BYTES",
    "MAX_MACHINE_ID",
    "MAX_NAME_BYTES",
    "MessageNotFound",
    "MigrationError",
    "MsgpackCodec",
    "REQUEST_HEADER",
    "RealtimeError",
    "RealtimeOptions",
    "Reason",
    "RequestContext",
    "RunnerAddress",
    "SerializationError",
    "ShardCountMismatch",
    "ShardId",
    "ShardingOptions",
    "SnowflakeGenerator",
    "SnowflakeParts",
    "StorageError",
    "StorageOptions",
    "SystemClock",
    "TENANT_HEADER",
    "TRACEPARENT_HEADER",
    "TestClock",
    "TransportError",
    "TransportOptions",
    "USER_HEADER",
    "VersionConflict",
    "WebhookError",
    "WebhookOptions",
    "WorkflowError",
    "configure_logging",
    "current_context",
    "parse_snowflake",
    "upcaster",
    "use_context",
]
