"""Freezes the public surface: changing it must be a deliberate edit here."""

from __future__ import annotations

import covey
import covey.core
import covey.storage
from covey.core import ClusterError, Reason

EXPECTED_TOP = [
    "Cluster", "ClusterError", "ClusterPlacement", "ConfigError", "CoveyConfig", "CronTick",
    "Entity", "EntityAddress", "EntityContext", "EntityError", "JobContext", "JobError",
    "JobHandle", "JobStatus", "Reason", "RequestContext", "Retry", "RunnerAddress",
    "SerializationError", "ShardId", "SingletonContext", "SnowflakeGenerator", "StorageError",
    "StorageOptions", "TransportError", "__version__", "current_context", "exponential",
    "open_storage", "rpc", "use_context",
]

EXPECTED_STORAGE = [
    "Duplicate", "Fence", "GroupCommit", "MAX_DEDUPE_KEY", "Message", "MessageRecord",
    "MessageStorage",
    "Reply", "RunnerInfo", "RunnerStorage", "SaveResult", "Saved", "StateStore",
    "Storage", "StorageInfo", "TransactionalMessages", "Versioned", "WakeupSource",
    "dedupe_key", "open_storage",
]


def test_top_level_exports() -> None:
    assert covey.__all__ == EXPECTED_TOP
    assert all(hasattr(covey, name) for name in covey.__all__)


def test_storage_exports() -> None:
    assert covey.storage.__all__ == EXPECTED_STORAGE
    assert all(hasattr(covey.storage, name) for name in covey.storage.__all__)


def test_export_lists_are_sorted() -> None:
    for module in (covey, covey.core, covey.storage):
        names = [n for n in module.__all__ if not n.startswith("__")]
        assert names == sorted(names), module.__name__


def test_every_error_is_a_cluster_error_with_its_own_reason() -> None:
    classes = [getattr(covey.core, n) for n in covey.core.__all__]
    errors = [c for c in classes if isinstance(c, type) and issubclass(c, Exception)]
    assert len(errors) >= 10
    for cls in errors:
        assert issubclass(cls, ClusterError)
        assert isinstance(cls("x").reason, Reason)
    assert ClusterError("x", reason=Reason.STORAGE_UNAVAILABLE).retryable
    assert not ClusterError("x", reason=Reason.FENCED).retryable
