"""Layer 3: durable background jobs — pushed, prioritized, retried, cancellable.

A job is a persisted message to the ``covey.Job`` entity type: it spreads across
runners by shard, starts as soon as it is stored (pushed to its owner, no polling
loop), survives runner death, and keeps its id across retries.

This namespace holds what an application writes: the handler's
:class:`JobContext`, the :class:`Retry` policy, what ``@cluster.job`` returns
(:class:`JobDefinition`), and what asking about jobs gives (``cluster.jobs``:
:class:`Jobs`, :class:`JobHandle`, :class:`JobStatus`). The machinery that runs
them is in :mod:`covey.jobs.runtime`.
"""

from covey.jobs._declared import JobDefinition
from covey.jobs._definition import (
    Backoff,
    JobStatus,
    PriorityName,
    Retry,
    RetryLater,
    exponential,
)
from covey.jobs._jobs import JobHandle, Jobs
from covey.jobs._runner import JobContext

__all__ = [
    "Backoff",
    "JobContext",
    "JobDefinition",
    "JobHandle",
    "JobStatus",
    "Jobs",
    "PriorityName",
    "Retry",
    "RetryLater",
    "exponential",
]
