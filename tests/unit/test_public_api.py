"""Freezes the public surface: changing it must be a deliberate edit here.

Every subpackage of covey, and every ``runtime`` module (what the assembly
wires, not for applications), has its ``__all__`` written down below; a new
subpackage or runtime module fails the test until it is added.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import covey
from covey.core import ClusterError, Reason

EXPECTED: dict[str, list[str]] = {
    "covey": [
        "Awakeable", "Cluster", "ClusterError", "ClusterPlacement", "ConfigError",
        "CoveyConfig", "CronTick", "Entity", "EntityAddress", "EntityContext", "EntityError",
        "Event", "EventContext", "JobContext", "JobError", "JobHandle", "JobStatus",
        "JournalEntry", "RealtimeError", "Reason", "RequestContext", "Retry", "RunnerAddress",
        "SerializationError", "ShardId", "SingletonContext", "SnowflakeGenerator",
        "StateMachine", "StorageError", "StorageOptions", "TransportError", "WebhookError",
        "Workflow",
        "WorkflowContext", "WorkflowError", "WorkflowHandle", "WorkflowStatus", "__version__",
        "configure_logging", "current_context", "exponential", "open_storage", "rpc",
        "upcaster", "use_context",
    ],
    "covey.asgi": [
        "HEALTH_CONTENT_TYPE", "HttpStatus", "JsonId", "MAX_SAFE_INTEGER", "MetricsApp",
        "PROBLEM_CONTENT_TYPE", "ProbeEndpoint", "Problem", "STATUS", "drain_on_sigterm",
        "install", "json_safe", "metrics_app", "problem_for", "status_of",
    ],
    "covey.cli": ["info_table", "main"],
    "covey.cluster": ["Cluster"],
    "covey.context": [
        "DEFAULT_EXEMPT_PATHS", "MAX_HEADER_BYTES", "RequestContextMiddleware", "header",
        "tenant_from_header", "trace_parent",
    ],
    "covey.dashboard": ["Authorize", "Dashboard", "DashboardRequest", "DashboardSource"],
    "covey.dashboard.runtime": ["HORIZON", "RunnerRow", "runner_rows", "shard_ranges"],
    "covey.core": [
        "AlreadyProcessed", "Clock", "ClusterError", "ClusterPlacement", "Codec", "ConfigError",
        "CoveyConfig", "DEFAULT_DATABASE_URL", "DEFAULT_GROUP", "EPOCH_MS", "EntityAddress",
        "EntityError", "FencedOut", "HealthOptions", "JobError", "JsonCodec", "LogOptions",
        "MAX_ENTITY_ID_BYTES",
        "MAX_HEADERS", "MAX_HEADER_VALUE_BYTES", "MAX_KEY_BYTES", "MAX_MACHINE_ID",
        "MAX_NAME_BYTES", "MessageNotFound", "MigrationError", "MsgpackCodec",
        "REQUEST_HEADER", "RealtimeError", "RealtimeOptions", "Reason", "RequestContext",
        "RunnerAddress", "SerializationError",
        "ShardCountMismatch", "ShardId", "ShardingOptions", "SnowflakeGenerator",
        "SnowflakeParts", "StorageError", "StorageOptions", "SystemClock", "TENANT_HEADER",
        "TRACEPARENT_HEADER", "TestClock", "TransportError", "TransportOptions",
        "USER_HEADER", "VersionConflict", "WebhookError", "WebhookOptions", "WorkflowError",
        "configure_logging", "current_context",
        "parse_snowflake", "upcaster",
        "use_context",
    ],
    "covey.core.runtime": [
        "SpanHandle", "TaskSet", "answer_lifespan", "being_cancelled", "check_seconds",
        "check_text", "check_upcasters", "codec_for", "configure_from_options", "consumer_span",
        "extract_trace", "http_span", "inject_trace", "internal_span", "invalid_argument",
        "log_context", "note_runner", "producer_span", "shard_for", "sleep_or_wake",
        "stable_hash", "state_version", "to_plain", "traced_context", "tracing_enabled",
        "upcast", "use_tracer_provider", "validate", "validate_value",
    ],
    "covey.health": ["Health", "Probe"],
    "covey.health.runtime": [
        "ENTITIES_KEY", "EntityCounts", "EntityReport", "HEALTH_LOOP", "HealthParts",
        "active_entities", "read_entity_counts",
    ],
    "covey.entities": [
        "Entity", "EntityContext", "EntityOptions", "StateMachine", "Transition", "rpc",
    ],
    "covey.entities.runtime": [
        "EffectScope", "EntityClient", "EntityRuntime", "EventStager", "OutboxClients",
        "RpcSpec", "STATE_KEY_PREFIX",
        "add_entity_type", "handler_unit", "read_state", "state_key",
    ],
    "covey.events": [
        "DeadLetter", "Event", "EventContext", "EventGroup", "Events", "GroupStart",
        "GroupStats", "TopicInfo",
    ],
    "covey.events.runtime": [
        "DEFAULT_RETENTION", "EVENTS_SINGLETON", "EventFanout", "EventPublisher", "EventRunner",
        "EventVersionUnknown", "RetryPolicy", "ShardFences", "Subscription", "decode_event",
        "delivery", "encode_event", "subscriptions",
    ],
    "covey.jobs": [
        "Backoff", "JobContext", "JobDefinition", "JobHandle", "JobStatus", "Jobs",
        "PriorityName", "Retry", "RetryLater", "exponential",
    ],
    "covey.jobs.runtime": [
        "DeadLetterOwner", "JOBS_METRICS", "JOB_ENTITY", "JobHost", "JobRunner", "JobSpec",
        "PrioritySemaphore", "RunnerJobHost", "error_history", "job_spec", "priority_value",
        "progress_key", "sample_job_metrics",
    ],
    "covey.sharding": ["LocalNetwork", "LocalTransport", "RunnerTransport", "TcpTransport"],
    "covey.sharding.runtime": [
        "Body", "Completed", "Deferred", "Deliverer", "DeliveryRegistry", "Envelope",
        "LocalNetwork", "LocalTransport", "Messenger", "NotifyHandler", "RETENTION_KEY",
        "RequestHandler", "Reschedule", "RetentionPurger", "RunnerTransport", "ShardListener",
        "Sharding", "StartRecords", "TcpTransport", "assign", "check_size", "error_for",
        "error_payload", "purge_processed", "raise_error_reply", "shards_of",
    ],
    "covey.sharding.transport": [
        "Body", "LocalNetwork", "LocalTransport", "NotifyHandler", "PeerLostCallback",
        "RequestHandler", "RunnerTransport", "TcpTransport",
    ],
    "covey.singletons": ["CronTick", "SingletonContext", "SingletonHealth"],
    "covey.singletons.runtime": [
        "CRON_ENTITY", "CronFn", "CronManager", "CronSpec", "SingletonFn", "SingletonManager",
        "SingletonSpec", "cron_spec",
    ],
    "covey.storage": [
        "DeliveryStats", "Duplicate", "EVENT_ENTITY_TYPE", "EventGroup", "EventRecord",
        "EventStore", "Fence", "GroupStart", "InspectionStore", "MAX_DEDUPE_KEY",
        "MAX_STREAM_KEY_BYTES", "Mail", "Message", "MessageRecord", "MessageStorage", "Reply",
        "Route", "RunnerInfo", "RunnerStorage", "SaveResult", "Saved", "ShardRow", "StateStore",
        "Storage", "StorageInfo", "StreamEntry", "StreamHead", "StreamItem", "StreamStore",
        "TagCount", "TopicInfo", "TransactionalEvents", "TransactionalMessages",
        "TransactionalStreams", "UnitOfWork", "Versioned", "WakeupSource", "dedupe_key",
        "open_storage",
    ],
    "covey.storage.memory": [
        "InMemoryEventStore", "InMemoryInspectionStore", "InMemoryMessageStorage",
        "InMemoryRunnerStorage", "InMemoryStateStore",
        "InMemoryStorage", "InMemoryStreamStore", "MemoryTransaction",
    ],
    "covey.storage.postgres": ["PostgresStorage", "PostgresTransaction"],
    "covey.storage.runtime": ["GroupCommit", "overwrite"],
    "covey.storage.sqlite": ["SqliteStorage", "SqliteTransaction"],
    "covey.testing": ["ReplayReport", "TestCluster", "replay"],
    "covey.realtime": [
        "Backoff", "Client", "ClientJsApp", "Connection", "Contract", "Cursor",
        "EventStreamResponse", "Handshake", "MethodSpec", "Presence", "Principal", "Push",
        "PushSpec", "Reset", "SseClient", "StreamCall", "StreamMessage", "Streams",
        "Subscription", "UserConnection", "WebSocketApp", "WebSocketOptions", "client_js_app",
        "connect", "connect_sse", "listen_socket", "method", "push", "sse_app", "websocket_app",
    ],
    "covey.realtime.runtime": [
        "ConnectionCounts", "ConnectionReport", "Contract", "ITEMS_KIND", "MAIL_KIND",
        "POKE_KIND", "Presence", "STREAM_ROUTE", "StreamHub", "StreamTrimmer", "Streams",
        "USER_KIND", "USER_ROUTE", "WebSocketApp", "cluster_websocket", "read_connections",
    ],
    "covey.webhooks": [
        "Attempt", "Endpoint", "MemoryReceivedStore", "PostgresReceivedStore", "ReceivedStore",
        "SqliteReceivedStore", "VerifiedWebhook", "WebhookDelivery", "WebhookReceiver",
        "WebhookSecret", "WebhookSent", "Webhooks", "check_url", "generate_secret", "is_public",
        "sign", "verify", "webhook_headers",
    ],
    "covey.webhooks.runtime": [
        "DeliveryOrder", "ENDPOINTS_KEY", "EndpointRegistry", "Gate", "WEBHOOK_JOB",
        "WebhookSender", "check_type", "retry_after",
    ],
    "covey.workflows": [
        "Awakeable", "ChildHandle", "JournalEntry", "StepCall", "Workflow", "WorkflowContext",
        "WorkflowHandle", "WorkflowStatus", "Workflows",
    ],
    "covey.workflows.runtime": [
        "ReplayReport", "WORKFLOW_ENTITY", "WorkflowRunner", "replay", "workflow_spec",
    ],
}


def _frozen_modules() -> list[str]:
    """Every package of covey and every ``runtime`` module, by name."""
    found = ["covey"]
    for info in pkgutil.walk_packages(covey.__path__, "covey."):
        if info.ispkg or info.name.rsplit(".", 1)[-1] == "runtime":
            found.append(info.name)
    return sorted(found)


def test_every_subpackage_and_runtime_module_is_frozen() -> None:
    assert _frozen_modules() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exports_are_frozen(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__ == EXPECTED[name]
    assert all(hasattr(module, export) for export in module.__all__)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_export_lists_are_sorted(name: str) -> None:
    names = [n for n in importlib.import_module(name).__all__ if not n.startswith("__")]
    assert names == sorted(names)


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["cluster", "testing", "cli"])
def test_the_assembly_imports_no_private_module_of_another_package(package: str) -> None:
    # covey.cluster builds runners from the runtime modules; a private module of
    # another package is that package's business and may change at any time
    root = Path(covey.__file__).parent / package
    private = sorted(
        f"{path.name}: {module}"
        for path in root.glob("*.py")
        for module in _imported_modules(path)
        if module.startswith("covey.") and not module.startswith(f"covey.{package}")
        and any(part.startswith("_") for part in module.split("."))
    )
    assert private == []


def test_every_error_is_a_cluster_error_with_its_own_reason() -> None:
    import covey.core

    classes = [getattr(covey.core, n) for n in covey.core.__all__]
    errors = [c for c in classes if isinstance(c, type) and issubclass(c, Exception)]
    assert len(errors) >= 10
    for cls in errors:
        assert issubclass(cls, ClusterError)
        assert isinstance(cls("x").reason, Reason)
    assert ClusterError("x", reason=Reason.STORAGE_UNAVAILABLE).retryable
    assert not ClusterError("x", reason=Reason.FENCED).retryable
